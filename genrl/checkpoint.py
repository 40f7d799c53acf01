"""Checkpoints: a LoRA that plain diffusers loads, and the full training state for an exact ``--resume``.

    checkpoints/epoch-0003/pytorch_lora_weights.safetensors   pipe.load_lora_weights("checkpoints/latest")
    checkpoints/epoch-0003/unet/                               (full fine-tuning instead of LoRA)
    checkpoints/epoch-0003/trainable.safetensors               every trainable tensor, exactly
    checkpoints/epoch-0003/optimizer.pt                        optimizer, LR scheduler, torch RNG
    checkpoints/epoch-0003/state.json                          counters, per-prompt reward statistics
    checkpoints/epoch-0003/ema/pytorch_lora_weights.safetensors  with --ema-decay: the EMA weights, as above
    checkpoints/epoch-0003/ema.pt                              with --ema-decay: the EMA state, for --resume
    checkpoints/latest -> epoch-0003

A checkpoint is staged in a hidden folder and renamed into place, then ``latest`` is switched atomically:
a crash at any point leaves the previous checkpoint as ``latest``, and a resume never sees a partial one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from diffusers.training_utils import EMAModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from genrl.errors import GenrlError

LATEST = "latest"


def save_checkpoint(
    checkpoints: Path,
    epoch: int,
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    state: dict[str, Any],
    keep: int,
    ema: EMAModel | None = None,
) -> Path:
    name = f"epoch-{epoch:04d}"
    staging = checkpoints / f".staging-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    trainable = {n: p.detach().contiguous().cpu() for n, p in unet.named_parameters() if p.requires_grad}
    save_file(trainable, staging / "trainable.safetensors")
    _save_for_diffusers(unet, staging)
    if ema is not None:
        with ema_weights(ema, [p for p in unet.parameters() if p.requires_grad]):
            _save_for_diffusers(unet, staging / "ema")
        torch.save(ema.state_dict(), staging / "ema.pt")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
        staging / "optimizer.pt",
    )
    (staging / "state.json").write_text(json.dumps(state))

    final = checkpoints / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    link = checkpoints / f".{LATEST}.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(name)
    os.replace(link, checkpoints / LATEST)

    for old in sorted(checkpoints.glob("epoch-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextmanager
def ema_weights(ema: EMAModel, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """The EMA weights in ``params`` inside the block, the trained ones again after it."""
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def _save_for_diffusers(unet: torch.nn.Module, folder: Path) -> None:
    """The LoRA as ``pipe.load_lora_weights(folder)`` reads it, or the whole UNet under full fine-tuning."""
    if getattr(unet, "peft_config", None):
        lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        # The adapter's config travels in the file's metadata: without it diffusers rebuilds the LoRA at
        # lora_alpha = rank, which scales a rank-16, alpha-32 adapter to half its trained strength.
        StableDiffusionPipeline.save_lora_weights(
            folder,
            unet_lora_layers=lora,
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
            safe_serialization=True,
        )
    else:
        unet.save_pretrained(folder / "unet", safe_serialization=True)


def latest_checkpoint(checkpoints: Path) -> Path | None:
    link = checkpoints / LATEST
    if not link.exists():
        return None
    return link.resolve()


def load_checkpoint(
    path: Path,
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    ema: EMAModel | None = None,
) -> dict[str, Any]:
    try:
        trainable = load_file(path / "trainable.safetensors")
        extra = torch.load(path / "optimizer.pt", weights_only=True)
        state = json.loads((path / "state.json").read_text())
        counters = state["counters"]
        if not {"epoch", "reward_queries", "wall_time_s"} <= set(counters):
            raise ValueError(
                f"state.json counters lack {sorted({'epoch', 'reward_queries', 'wall_time_s'} - set(counters))}"
            )
        ema_state = None
        if ema is not None:
            if not (path / "ema.pt").is_file():
                raise GenrlError(f"checkpoint '{path}' was saved without --ema-decay; resume without it")
            ema_state = torch.load(path / "ema.pt", weights_only=True)
    except GenrlError:
        raise
    except Exception as exc:  # safetensors, pickle and JSON each fail in their own way on a damaged file
        reason = f"no {exc} entry" if isinstance(exc, KeyError) else (str(exc).splitlines() or [type(exc).__name__])[0]
        raise GenrlError(
            f"checkpoint '{path}' is unreadable ({reason}); start a new run or restore the folder"
        ) from exc
    params = dict(unet.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in trainable]
    if missing:
        raise GenrlError(
            f"checkpoint '{path}' does not match the model ({len(missing)} trainable tensors missing, "
            f"e.g. {missing[0]}); "
            "resume with the run's own configuration"
        )
    for name, value in trainable.items():
        if name not in params or params[name].shape != value.shape:
            found = tuple(params[name].shape) if name in params else "no such tensor"
            raise GenrlError(
                f"checkpoint '{path}' holds {name} of shape {tuple(value.shape)}, the model has {found}; "
                "resume with the run's own configuration"
            )
        if not torch.isfinite(value).all():
            raise GenrlError(
                f"checkpoint '{path}' holds non-finite weights ({name}); the run had diverged by then: "
                "resume from an earlier checkpoint or start a new run with a lower --learning-rate"
            )
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value)
    try:
        optimizer.load_state_dict(extra["optimizer"])
        lr_scheduler.load_state_dict(extra["lr_scheduler"])
        torch.set_rng_state(extra["torch_rng"])
        if ema is not None:
            ema.load_state_dict(ema_state)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise GenrlError(
            f"checkpoint '{path}': optimizer.pt does not fit this run ({str(exc).splitlines()[0]}); "
            "resume with the run's own configuration or start a new run"
        ) from exc
    return state
