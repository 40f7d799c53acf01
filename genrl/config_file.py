"""config.json, a run's saved configuration: written when the run starts, read back on --resume (files written by
older versions migrated to today's fields), and the part of it a checkpoint only fits."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from genrl.algos.common import PolicyGradientConfig
from genrl.algos.registry import settings_name
from genrl.config import RUN_FIELDS, TrainConfig, settings_class
from genrl.config_sampler import without_other_samplers_settings
from genrl.errors import GenrlError


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------
def config_to_json(cfg: TrainConfig) -> dict:
    """config.json: the run's fields, and the algorithm's settings under its name (``"ppo": {...}``)."""
    data = {name: getattr(cfg, name) for name in RUN_FIELDS}
    if cfg.algo_config is not None:
        data[settings_name(cfg.algo)] = dataclasses.asdict(cfg.algo_config)
    return json.loads(json.dumps(data, default=str))


# --------------------------------------------------------------------------------------------------
# Reading, and the migration of files that older versions wrote
# --------------------------------------------------------------------------------------------------
# Fields added after runs were saved without them, and the value that reproduces those runs.
_ADDED_SINCE = {
    **{"lr_schedule": "constant", "eval_every": 0, "eval_size": 32, "eval_prompts": None},
    **{"mixed_precision": "no", "allow_tf32": True, "threads": None},  # threads: chosen again for the resume
    **{"compile": False},
    **{"keep_best": False, "accuracy_floor": 0.8, "early_stop_patience": 0},
    **{"noise_level": None, "noise_mode": "flow_grpo", "sampler": None},
    **{"sde_window": None, "eval_num_steps": None, "global_std": False},
    **{"log_with": ["tensorboard"]},
    **{"eval_ode": False, "eval_ema": False},
}
# Settings of PPO and REINFORCE (and of the classes built on PolicyGradientConfig) added after runs were saved without
# them, and the value that reproduces those runs.
_SETTINGS_ADDED_SINCE = {"kl_form": "closed", "timestep_fraction": 1.0, "ratio_norm": False, "step_weight": "none"}
# Settings that config.json held among the run's fields before each algorithm owned its own, and their names there.
_FLAT_ALGORITHM_FIELDS = {
    **{name: name for name in ("train_batch_size", "gradient_accumulation_steps", "steps_per_forward")},
    **{name: name for name in ("inner_epochs", "clip_range", "adv_clip_max", "max_grad_norm", "kl_coef")},
    "dpg_truncation": "truncation",
    "gradient_checkpointing": "gradient_checkpointing",
}


def read_config(path: Path) -> TrainConfig:
    """A run's saved config.json; every field must be there, as a resume has to repeat the run exactly."""
    if not path.is_file():
        raise GenrlError(f"--resume {path.parent}: no config.json there; pass a run directory made by genrl.train")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise GenrlError(f"{path} is unreadable ({exc}); restore it or start a new run") from None
    if not isinstance(data, dict):
        raise GenrlError(f"{path} holds {type(data).__name__}, not a configuration; restore it or start a new run")
    algo = data.get("algo")
    if not isinstance(algo, str):
        raise GenrlError(f"{path}: algo is {json.dumps(algo)[:60]}, not a string; restore it or start a new run")
    name = settings_name(algo)
    flat = {key: data.pop(key) for key in list(data) if key in _FLAT_ALGORITHM_FIELDS and key != name}
    settings = data.pop(name, None)
    config = settings_class(algo)
    if settings is None and config is not None and flat:  # written before the algorithm owned its settings
        known = {f.name for f in dataclasses.fields(config)}
        settings = {_FLAT_ALGORITHM_FIELDS[k]: v for k, v in flat.items() if _FLAT_ALGORITHM_FIELDS[k] in known}
    data = {**_ADDED_SINCE, **data}  # runs saved before a field existed ran as its value here says
    data = without_other_samplers_settings(data)
    values = _checked_fields(path, data, TrainConfig, RUN_FIELDS, "")
    if config is not None:
        if not isinstance(settings, dict):
            raise GenrlError(f"{path} has no '{name}' object of algorithm settings; restore it or start a new run")
        fields = tuple(f.name for f in dataclasses.fields(config))
        if issubclass(config, PolicyGradientConfig):
            settings = {**{k: v for k, v in _SETTINGS_ADDED_SINCE.items() if k in fields}, **settings}
        values["algo_config"] = config(**_checked_fields(path, settings, config, fields, f"{name}."))
    return TrainConfig(**values)


def _checked_fields(path: Path, data: dict, cls: type, fields: tuple[str, ...], prefix: str) -> dict:
    """``data``'s values of ``cls``'s ``fields``, checked against their types and converted from JSON; every field
    must be there, as a resume has to repeat the run exactly."""
    unknown, missing = set(data) - set(fields), set(fields) - set(data)
    if unknown or missing:
        what = f"unknown fields {sorted(unknown)}" if unknown else f"no fields {sorted(missing)}"
        where = f" in '{prefix[:-1]}'" if prefix else ""
        raise GenrlError(f"{path} has {what}{where}; was it written by another version? Restore it or start a new run")
    hints = typing.get_type_hints(cls, include_extras=False)
    values = {}
    for name in fields:
        if not _json_fits(data[name], hints[name]):
            raise GenrlError(
                f"{path}: {prefix}{name} is {json.dumps(data[name])[:60]}, not {_describe_type(hints[name])}; restore "
                "it (the run must repeat its configuration) or start a new run"
            )
        values[name] = _from_json(data[name], hints[name])
    return values


def _from_json(value: Any, hint: Any) -> Any:
    """A JSON value as the field's type holds it: lists as tuples, strings as paths."""
    if value is None:
        return None
    if typing.get_origin(hint) is tuple:
        return tuple(value)
    if hint is Path or Path in typing.get_args(hint):
        return Path(value)
    return value


def _json_fits(value: object, hint: object) -> bool:
    """Whether a config.json value is what ``config_to_json`` writes for a field of type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args and not isinstance(value, bool)
    if origin in (typing.Union, types.UnionType):
        return any(_json_fits(value, arg) for arg in args)
    if origin is tuple:  # tuple[str, ...], written as a JSON list
        return isinstance(value, list) and all(_json_fits(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # JSON writes 1.0 as 1.0, but a hand edit may write 1
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (str, Path):
        return isinstance(value, str)
    return False


def _describe_type(hint: object) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in args)
    if origin is tuple:
        return "a list of strings"
    names = {type(None): "null", bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    return names.get(hint, "a path")


# --------------------------------------------------------------------------------------------------
# The part a checkpoint only fits
# --------------------------------------------------------------------------------------------------
# Fields a resumed run must keep: the checkpoint only fits the model it was trained on.
FIXED_ON_RESUME = ("model", "env", "algo", "finetune", "lora_rank", "lora_alpha", "lora_target_modules")


def fixed_configuration(cfg: TrainConfig) -> dict:
    """The fields a checkpoint only fits, as config.json writes them: saved with it, compared on --resume, so an
    edited config.json cannot load the weights into another model."""
    saved = config_to_json(cfg)
    return {name: saved[name] for name in FIXED_ON_RESUME}


def check_fixed_configuration(cfg: TrainConfig, saved: object) -> None:
    """On --resume: ``cfg`` (the run's config.json) against the ``fixed_configuration`` its checkpoint was saved
    with; ``saved`` is None in checkpoints saved before it was recorded, which are not checked."""
    if not isinstance(saved, dict):
        return
    for name, value in fixed_configuration(cfg).items():
        if name in saved and saved[name] != value:
            raise GenrlError(
                f"--resume {cfg.resume}: config.json has {name} {value!r}, but the checkpoint was trained with "
                f"{saved[name]!r}; restore config.json's {name} (the checkpoint only fits that)"
            )
