"""Samplers by ``--sampler`` name: the pure maths of one step, each one module with its own settings.

Adding a sampler is its module (a ``genrl.samplers.base.Sampler`` subclass and its ``Settings``) plus one line of
``SAMPLERS``.
"""

from __future__ import annotations

import importlib

from genrl.samplers.base import Sampler, Schedule, settings_fields

SAMPLERS = {
    "lcm": "genrl.samplers.lcm:LCMSampler",  # consistency multistep sampling (RLCM)
    "ddim": "genrl.samplers.ddim:DDIMSampler",  # DDIM with eta > 0 (DDPO)
    "flow_sde": "genrl.samplers.flow_sde:FlowSDESampler",  # flow matching as an SDE (Flow-GRPO, DanceGRPO)
    "cps": "genrl.samplers.cps:CPSSampler",  # coefficients-preserving sampling
}


def sampler_class(name: str) -> type[Sampler]:
    """The sampler called ``name``; ``ValueError`` for a name not in ``SAMPLERS``."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    module, _, cls = SAMPLERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def samplers_with(setting: str) -> list[str]:
    """The samplers that have a setting of that name, in ``SAMPLERS`` order."""
    return [name for name in SAMPLERS if setting in settings_fields(sampler_class(name).Settings)]


__all__ = ["SAMPLERS", "Sampler", "Schedule", "sampler_class", "samplers_with"]
