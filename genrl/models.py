"""Loading pipelines: a hub id, a local diffusers folder, or 'tiny' — all through ``from_pretrained``."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from huggingface_hub import try_to_load_from_cache

from genrl.adapters import adapter_for
from genrl.errors import GenrlError
from genrl.families import family
from genrl.precision import frozen_parts
from genrl.samplers import sampler_class
from genrl.samplers.base import check_pairing
from genrl.shapes import shipped_dir
from genrl.shapes.tiny import TINY_MODELS, tiny_model_dir


def resolve_model(model: str, env: str) -> str:
    """Built-in names map to local folders: 'shapes' (the embedded model the env's family samples: the LCM or its
    teacher) and 'tiny' (random weights, of the kind the family samples). Anything else is passed to diffusers as
    is."""
    if model == "tiny":
        return str(tiny_model_dir(family(env).tiny_model))
    if model in TINY_MODELS:
        return str(tiny_model_dir(model))
    if model == "shapes":
        folder = shipped_dir() / family(env).shapes_model
        if not (folder / "model_index.json").exists():
            # A family whose shapes model genrl.shapes.pretrain does not build (yet) says so itself.
            missing = family(env).shapes_missing
            rebuild = "rebuild them: python -m genrl.shapes.pretrain"
            raise GenrlError(missing or f"the shapes models are missing from {folder.parent}; {rebuild}")
        return str(folder)
    return model


def _no_safety_checker(source: str, local: bool) -> dict[str, Any]:
    """Stable Diffusion 1.x's safety checker is not loaded (it would blank images a reward should score). Pipelines
    without one (SD3) are not given the argument, which diffusers would warn about on every load: known from the
    model_index.json on this disk (the folder, or the hub cache, read without a download)."""
    index = Path(source) / "model_index.json" if local else try_to_load_from_cache(source, "model_index.json")
    if isinstance(index, (str, Path)) and Path(index).is_file():
        if "safety_checker" not in json.loads(Path(index).read_text()):
            return {}
    return {"safety_checker": None}


def load_pipeline(model: str, env: str, device: str = "cpu", dtype=torch.float32, sampler: str | None = None) -> Any:
    """The pipeline for family ``env`` (``genrl.families``), with its scheduler set to the one its sampler (or
    ``sampler``) mirrors, frozen. ``GenrlError`` for a model genrl has no adapter for, or one the sampler cannot
    sample."""
    source = resolve_model(model, env)
    local = Path(source).is_dir()
    if not local and (Path(source).is_absolute() or source.startswith((".", "~")) or source.count("/") > 1):
        raise GenrlError(f"model '{model}': no such folder; pass a diffusers pipeline folder or a hub id")
    if local and not (Path(source) / "model_index.json").exists():
        raise GenrlError(f"model '{model}' has no model_index.json; pass a folder saved by a diffusers pipeline")
    try:
        pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype, **_no_safety_checker(source, local))
    except (OSError, ValueError) as exc:
        if local:
            raise GenrlError(
                f"model '{model}' could not be loaded ({str(exc).splitlines()[0]}); check the folder"
            ) from exc
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "false", "")
        how = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise GenrlError(
            f"model '{model}' is not in the local cache and {how}; download it on a machine with network "
            "(huggingface-cli download) or pass a local pipeline folder"
        ) from exc
    return prepare_pipeline(pipe, model, env, device, sampler)


def prepare_pipeline(pipe: Any, model: str, env: str, device: str = "cpu", sampler: str | None = None) -> Any:
    """What ``load_pipeline`` does to a loaded pipeline: its adapter and sampler checked, its scheduler set to the
    one its sampler mirrors, its parts frozen, moved to ``device``. ``model`` names it in errors. For pipelines built
    in memory (``benchmarks.gpu_check``'s random-weight ones at the published sizes)."""
    sampler_cls = sampler_class(sampler or family(env).sampler)
    try:
        adapter = adapter_for(pipe)
        check_pairing(sampler_cls, adapter)
    except ValueError as exc:
        raise GenrlError(f"model '{model}': {exc}") from None
    if adapter.prediction_type not in ("epsilon", "v_prediction", "flow") or (
        sampler_cls.model_kind == "consistency" and adapter.prediction_type != "epsilon"
    ):
        raise GenrlError(
            f"model '{model}' predicts '{adapter.prediction_type}'; the {sampler_cls.name} sampler takes "
            f"{'epsilon' if sampler_cls.model_kind == 'consistency' else 'epsilon or v'} predictions"
        )
    # genrl's steps never clip or threshold x0, as the reference configs (SD 1.5, LCM_Dreamshaper_v7) do not.
    # (A flow scheduler neither clips nor thresholds, and takes no such options.)
    accepted = inspect.signature(sampler_cls.scheduler_class.__init__).parameters
    no_clipping = {key: False for key in ("clip_sample", "thresholding") if key in accepted}
    pipe.scheduler = sampler_cls.scheduler_class.from_config(pipe.scheduler.config, **no_clipping)
    for part in frozen_parts(pipe):
        part.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
