"""The ``--env`` names: today's pairings of a sampler with the models it samples.

    lcm    the ``lcm`` sampler (consistency multistep sampling, RLCM) on a latent consistency model
    ddpm   the ``ddim`` sampler with eta > 0 (DDPO) on a diffusion model
    flow   the ``flow_sde`` sampler (Flow-GRPO, DanceGRPO) on a flow-matching model (SD3, FLUX)

The model's adapter is found from the pipeline (``genrl.adapters``); ``--sampler`` pairs another sampler with the
same kind of model (``--env flow --sampler cps``). Each name is also a Gymnasium id, ``genrl/LCM-v0`` and so on
(registered by ``genrl.envs``). This module imports nothing of genrl: every layer may read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Family:
    sampler: str
    """The sampler it pairs by default (``genrl.samplers.SAMPLERS``)."""
    shapes_model: str
    """The embedded shapes model ``--model shapes`` loads for it."""
    tiny_model: str
    """The tiny random-weight pipeline ``--model tiny`` loads for it (``genrl.shapes.tiny``)."""
    shapes_missing: str | None = None
    """The error for ``--model shapes`` while that shapes model is not built."""


FAMILIES = {
    "lcm": Family(sampler="lcm", shapes_model="lcm", tiny_model="tiny-lcm"),
    "ddpm": Family(sampler="ddim", shapes_model="teacher", tiny_model="tiny-sd"),
    "flow": Family(
        sampler="flow_sde",
        shapes_model="flow",
        tiny_model="tiny-sd3",
        shapes_missing=(
            "the embedded shapes flow model has not been trained yet: build it with `python -m genrl.shapes.pretrain "
            "flow` (it needs the shipped teacher only), or use --model tiny, or a Stable Diffusion 3 or FLUX pipeline "
            "folder or hub id"
        ),
    ),
}

# What --env takes: a Literal, so that tyro's --help lists the choices; built from FAMILIES, the one place to add one.
FamilyName = Literal[tuple(FAMILIES)]  # type: ignore[valid-type]


def env_id(name: str) -> str:
    """The Gymnasium id of family ``name``: ``genrl/LCM-v0``, ``genrl/DDPM-v0``, ``genrl/FLOW-v0``."""
    return f"genrl/{name.upper()}-v0"


ENV_IDS = {name: env_id(name) for name in FAMILIES}


def family(name: str) -> Family:
    """Family ``name``. Raises ``ValueError`` for a name not in ``FAMILIES``."""
    if name not in FAMILIES:
        raise ValueError(f"env kind must be one of {sorted(FAMILIES)}, got {name!r}")
    return FAMILIES[name]
