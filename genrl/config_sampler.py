"""The run's sampler and its settings: which flags each sampler owns, their checks, and the keywords ``make_env``
and ``load_pipeline`` take.

Each sampler's settings live in its module (``genrl.samplers.*.Settings``, one default each); ``TrainConfig`` has one
flag per setting, spelt as the setting (``--eta``, ``--noise-level``), so that config.json files of every version
read as they are. A flag of a setting the run's sampler does not have is a one-line error, whether it was given on
the command line (``flags_of_other_samplers``) or left in a configuration with a value (``check_sampler_settings``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from genrl.errors import GenrlError
from genrl.families import FAMILIES, family
from genrl.samplers import SAMPLERS, sampler_class, samplers_with
from genrl.samplers.base import settings_fields, the_samplers
from genrl.samplers.ddim import DDIMSettings
from genrl.samplers.flow_sde import FlowSDESettings
from genrl.samplers.lcm import LCMSettings

SamplerName = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]

SAMPLER_FIELDS = ("eta", "noise_last_step", "noise_level", "noise_mode", "sde_window")
"""The TrainConfig fields that are samplers' settings, each named as the setting in the samplers that have it."""
UNSET = {
    "eta": DDIMSettings.eta,
    "noise_last_step": LCMSettings.noise_last_step,
    "noise_level": None,
    "noise_mode": FlowSDESettings.noise_mode,
    "sde_window": None,
}
"""Each sampler flag's value when not given: TrainConfig's defaults (``None``: the run's sampler's own default)."""


def sampler_name(cfg: Any) -> str:
    """The run's sampler: ``--sampler``, else its family's."""
    return getattr(cfg, "sampler", None) or family(cfg.env).sampler


def sampler_settings(cfg: Any) -> Any:
    """The run's sampler's ``Settings``: its fields from the run's flags, its own defaults where a flag is unset
    (None)."""
    cls = sampler_class(sampler_name(cfg)).Settings
    values = {key: getattr(cfg, key) for key in settings_fields(cls) if getattr(cfg, key, None) is not None}
    return cls(**values)


def sampler_options(cfg: Any) -> dict[str, Any]:
    """``make_env``'s ``sampler`` and settings keywords for the run."""
    return {"sampler": sampler_name(cfg), **dataclasses.asdict(sampler_settings(cfg))}


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _not_its_own(cfg: Any, field: str) -> GenrlError:
    name = sampler_name(cfg)
    owners = samplers_with(field)
    own = settings_fields(sampler_class(name).Settings)
    return GenrlError(
        f"{_flag(field)} is a setting of {the_samplers(owners)}, and this run samples with {name} (--env "
        f"{cfg.env}{'' if getattr(cfg, 'sampler', None) is None else ' --sampler ' + name}), whose settings are "
        f"{', '.join(_flag(f) for f in own) or 'none'}; drop it"
    )


def without_other_samplers_settings(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config.json's fields with the settings its sampler does not have set back to unset. Runs saved before
    the samplers owned their settings carried every one (the flow sampler's noise level 0.7 on an LCM run, an --eta
    that an LCM run ignored); they never applied, and left as they were they would refuse every --resume."""
    name = data.get("sampler") or (FAMILIES[data["env"]].sampler if data.get("env") in FAMILIES else None)
    if name not in SAMPLERS:
        return data  # the field checks name what is wrong
    own = settings_fields(sampler_class(name).Settings)
    return {key: (UNSET[key] if key in UNSET and key not in own else value) for key, value in data.items()}


def check_sampler_settings(cfg: Any) -> None:
    """Refuse, in one line, a sampler setting the run's sampler does not have (set to anything but its unset value)
    and settings the sampler's maths cannot take."""
    name = sampler_name(cfg)
    cls = sampler_class(name)
    if cls.model_kind != sampler_class(family(cfg.env).sampler).model_kind:
        raise GenrlError(
            f"--sampler {name} samples {cls.model_kind} models and --env {cfg.env} loads "
            f"{sampler_class(family(cfg.env).sampler).model_kind} models; pick a sampler of that kind"
        )
    own = settings_fields(cls.Settings)
    for field in SAMPLER_FIELDS:
        if field not in own and getattr(cfg, field) != UNSET[field]:
            raise _not_its_own(cfg, field)
    try:
        cls.validate(sampler_settings(cfg), cfg.num_steps)
    except ValueError as exc:
        raise GenrlError(f"{exc} (sampler {name}, --num-steps {cfg.num_steps})") from None


def flags_of_other_samplers(cfg: Any, given: set[str]) -> None:
    """Refuse sampler flags given on the command line (``given``: field names) that the run's sampler lacks, even at
    their default value."""
    own = settings_fields(sampler_class(sampler_name(cfg)).Settings)
    for field in SAMPLER_FIELDS:
        if field in given and field not in own:
            raise _not_its_own(cfg, field)
