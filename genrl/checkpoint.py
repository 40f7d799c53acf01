"""Checkpoints: a LoRA that plain diffusers loads, and the full training state for an exact ``--resume``.

    checkpoints/epoch-0003/pytorch_lora_weights.safetensors   pipe.load_lora_weights("checkpoints/latest")
    checkpoints/epoch-0003/unet/                               (full fine-tuning instead of LoRA; transformer/ for
                                                               a flow model)
    checkpoints/epoch-0003/trainable.safetensors               every trainable tensor, exactly
    checkpoints/epoch-0003/optimizer.pt                        optimizer, LR scheduler, torch RNG
    checkpoints/epoch-0003/state.json                          counters, per-prompt reward statistics
    checkpoints/epoch-0003/ema/pytorch_lora_weights.safetensors  with --ema-decay: the EMA weights, as above
    checkpoints/epoch-0003/ema.pt                              with --ema-decay: the EMA state, for --resume
    checkpoints/latest -> epoch-0003
    checkpoints/best -> epoch-0002                             with --keep-best: the best evaluation's (genrl/best.py)

A checkpoint is staged in a hidden folder and renamed into place, then ``latest`` is switched atomically:
a crash at any point leaves the previous checkpoint as ``latest``, and a resume never sees a partial one.
``--resume`` takes the complete checkpoint of the highest epoch number, whatever ``latest`` says (a copy without
symlinks has none), and pruning orders checkpoints by number too (as text, epoch-10000 sorts before epoch-9999).
Every tensor saved or loaded, weights, EMA, optimizer moments and the LR scheduler's state, is checked to be finite:
a NaN would otherwise travel silently into the exported LoRA.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from genrl.adapters.base import ModelAdapter
from genrl.errors import GenrlError

LATEST = "latest"
BEST = "best"
CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.pt", "state.json")
"""What a complete checkpoint holds; the LoRA for diffusers is derived from trainable.safetensors."""
_NAME = re.compile(r"^epoch-(\d+)$")
# fp16's loss scale: below fp16's smallest number every gradient underflows to 0 (training on, silently, with a
# gradient norm of 0); above float32's range the scaled loss is infinite and every step is skipped.
_MIN_LOSS_SCALE, _MAX_LOSS_SCALE = 2.0**-24, 2.0**127


def first_non_finite(value: Any, name: str) -> str | None:
    """The name of the first floating tensor with a NaN or inf inside ``value`` (nested dicts, lists, tuples)."""
    if torch.is_tensor(value):
        return name if value.is_floating_point() and not torch.isfinite(value).all() else None
    if isinstance(value, float):
        return None if math.isfinite(value) else name
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else []
    for key, item in items:
        found = first_non_finite(item, f"{name}[{key!r}]" if not isinstance(key, str) else f"{name}.{key}")
        if found is not None:
            return found
    return None


def checkpoint_epochs(checkpoints: Path) -> list[tuple[int, Path]]:
    """The epoch-NNNN folders, as (epoch, path) in order of epoch number."""
    found = []
    for path in checkpoints.glob("epoch-*"):
        match = _NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match[1]), path))
    return sorted(found)


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in CHECKPOINT_FILES)


def save_checkpoint(
    checkpoints: Path,
    epoch: int,
    adapter: ModelAdapter,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    state: dict[str, Any],
    keep: int,
    ema: EMAModel | None = None,
    protect: Path | None = None,
    algorithm_state: dict[str, Any] | None = None,
) -> Path:
    """The checkpoint of ``epoch``, pointed at by ``latest``; of the older ones the ``keep`` - 1 newest stay, and
    ``protect`` (the best one) whatever its age. ``algorithm_state``: what an algorithm keeps between epochs (its
    ``state_dict()``: DiffusionNFT's old weights), saved in optimizer.pt."""
    name = checkpoint_name(epoch)
    net = adapter.denoiser
    trainable = {n: p.detach().contiguous().cpu() for n, p in net.named_parameters() if p.requires_grad}
    extra = {
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    if algorithm_state is not None:
        extra["algorithm"] = algorithm_state
    ema_state = ema.state_dict() if ema is not None else None
    checked = {
        "weights": trainable,
        "optimizer state": extra["optimizer"],
        "scheduler state": extra["lr_scheduler"],
        "EMA state": ema_state,
        "algorithm state": algorithm_state,
    }
    for what, value in checked.items():
        bad = first_non_finite(value, what)
        if bad is not None:
            raise GenrlError(
                f"epoch {epoch}: the {bad} holds NaN or infinite values, so training diverged; nothing of this epoch "
                "was saved: resume from the previous checkpoint with a lower --learning-rate, or start again"
            )
    staging = checkpoints / f".staging-{name}"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_file(trainable, staging / "trainable.safetensors")
        _save_for_diffusers(adapter, staging)
        if ema is not None:
            with ema_weights(ema, [p for p in net.parameters() if p.requires_grad]):
                _save_for_diffusers(adapter, staging / "ema")
            torch.save(ema_state, staging / "ema.pt")
        torch.save(extra, staging / "optimizer.pt")
        (staging / "state.json").write_text(json.dumps(state))
    except BaseException as exc:  # a full disk, say: no half-written folder is left to mistake for a checkpoint
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: the caller's own stop
            raise
        # Only serialisation runs above, so any failure is the disk's: safetensors, torch and the OS each raise
        # their own type for it (SafetensorError, RuntimeError, OSError).
        reason = (getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise GenrlError(
            f"cannot write checkpoint {checkpoints / name} ({reason[:200]}); free disk space, then continue with "
            f"--resume {checkpoints.parent} (the previous checkpoint is kept)"
        ) from exc

    final = checkpoints / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    point_link(final, LATEST)

    for _, old in checkpoint_epochs(checkpoints)[:-keep]:  # by epoch number, never as text
        if old not in (final, protect):
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


@contextmanager
def ema_weights(ema: EMAModel, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """The EMA weights in ``params`` inside the block, the trained ones again after it."""
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def _save_for_diffusers(adapter: ModelAdapter, folder: Path) -> None:
    """The LoRA as ``load_lora_weights(folder)`` of the adapter's pipeline class reads it, or the whole denoiser
    under full fine-tuning, as ``from_pretrained`` of its class reads it."""
    net = adapter.denoiser
    if not getattr(net, "peft_config", None):
        net.save_pretrained(folder / adapter.denoiser_attr, safe_serialization=True)
        return
    adapter.save_lora(folder)


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The complete checkpoint of the highest epoch (``latest`` pointed back at it); None where no epoch was saved.

    ``latest`` is not trusted: a copy without symlinks lacks it, and a crash between renaming a checkpoint into place
    and switching the link leaves it one behind. Folders without every file (damaged by hand) are passed over, and
    if every one is, that is an error: restarting would overwrite the run's progress."""
    saved = checkpoint_epochs(checkpoints)
    complete = [path for _, path in saved if is_complete(path)]
    if saved and not complete:
        raise GenrlError(
            f"{checkpoints} holds {len(saved)} checkpoint folders, none complete (each needs "
            f"{', '.join(CHECKPOINT_FILES)}); restore one, or start a new run elsewhere"
        )
    if not complete:
        return None
    newest = complete[-1]
    link = checkpoints / LATEST
    # Read, not resolved: a link to itself (or any loop) is a RuntimeError to resolve, and is repaired like the rest.
    if not link.is_symlink() or os.readlink(link) != newest.name:
        point_link(newest, LATEST)
    return newest


def point_link(folder: Path, name: str) -> None:
    """Switch the link ``name`` beside ``folder`` (``latest``, ``best``) to it atomically: a new link, renamed over.
    The new link's name is the process's own: on a resume every process of a run repairs ``latest`` at once, and a
    shared name let one rename the other's link away."""
    link = folder.parent / f".{name}.{os.getpid()}.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(folder.name)
    os.replace(link, folder.parent / name)


def load_checkpoint(
    path: Path,
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    ema: EMAModel | None = None,
    algorithm: Any = None,
) -> dict[str, Any]:
    """Restores the weights, the optimizer, the LR schedule, the RNG, the EMA and ``algorithm``'s state (where it
    has ``load_state_dict``) from ``path``; returns state.json's contents."""
    try:
        trainable = load_file(path / "trainable.safetensors")
        extra = torch.load(path / "optimizer.pt", weights_only=True)
        state = json.loads((path / "state.json").read_text())
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
    problem = state_problem(state)
    named = _NAME.match(path.name)
    if problem is None and named and int(named[1]) != state["counters"]["epoch"]:
        # The highest folder is resumed: were its state behind its name, every resume would go back to that epoch.
        problem = f"counters.epoch is {state['counters']['epoch']}, but the folder is {path.name}"
    if problem is not None:
        raise GenrlError(f"checkpoint '{path}': state.json {problem}; restore the folder or start a new run")
    optimizer_state = extra.get("optimizer") if isinstance(extra, dict) else None
    scheduler_state = extra.get("lr_scheduler") if isinstance(extra, dict) else None
    algorithm_state = extra.get("algorithm") if isinstance(extra, dict) else None
    if hasattr(algorithm, "load_state_dict") and algorithm_state is None:
        raise GenrlError(f"checkpoint '{path}' holds no state of the algorithm; resume with the run's own --algo")
    checked = (
        ("optimizer state", optimizer_state),
        ("scheduler state", scheduler_state),
        ("EMA state", ema_state),
        ("algorithm state", algorithm_state),
    )
    for what, value in checked:
        bad = first_non_finite(value, what)
        if bad is not None:
            raise GenrlError(
                f"checkpoint '{path}': the {bad} holds NaN or infinite values; resume from an earlier checkpoint "
                "or start a new run"
            )
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
        if value.dtype != params[name].dtype:
            raise GenrlError(
                f"checkpoint '{path}' holds {name} as {value.dtype}, the model trains it as {params[name].dtype}; "
                "restore the checkpoint genrl.train wrote"
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
        optimizer.load_state_dict(optimizer_state)
        lr_scheduler.load_state_dict(extra["lr_scheduler"])
        torch.set_rng_state(extra["torch_rng"])
        if ema is not None:
            ema.load_state_dict(ema_state)
        if hasattr(algorithm, "load_state_dict"):
            algorithm.load_state_dict(algorithm_state)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise GenrlError(
            f"checkpoint '{path}': optimizer.pt does not fit this run ({str(exc).splitlines()[0]}); "
            "resume with the run's own configuration or start a new run"
        ) from exc
    return state


def state_problem(state: Any) -> str | None:
    """What is wrong with a state.json's structure, in a few words; None where it is what ``genrl.train`` writes.

    Checked before any training: a wall time of "abc" would otherwise fail only after the next epoch."""
    if not isinstance(state, dict) or not isinstance(state.get("counters"), dict):
        return "has no 'counters' object"
    counters = state["counters"]
    for key, kind in (("epoch", int), ("reward_queries", int), ("wall_time_s", float), ("cpu_time_s", float)):
        if key not in counters:
            if key == "cpu_time_s":  # absent from runs saved before it was counted
                continue
            return f"counters lack '{key}'"
        value = counters[key]
        if not _is_number(value, integer=kind is int) or value < 0:
            what = "a whole number" if kind is int else "a number of seconds"
            return f"counters.{key} is {value!r}, not {what} >= 0"
    processes = state.get("num_processes", 1)
    if not _is_number(processes, integer=True) or processes < 1:
        return f"num_processes is {processes!r}, not a whole number >= 1"
    tracker = state.get("tracker")
    if tracker is not None and not _is_tracker(tracker):
        return "has a 'tracker' that is not per-prompt statistics (buffer_size, min_count, history of rewards)"
    scaling = state.get("loss_scaling", {})
    if not isinstance(scaling, dict) or not all(_is_number(v) for v in scaling.values()):
        return "has a 'loss_scaling' that is not fp16's scaler state (numbers by name)"
    scale = scaling.get("scale", 1.0)
    if not _MIN_LOSS_SCALE <= scale <= _MAX_LOSS_SCALE:
        return f"loss_scaling.scale is {scale!r}, outside fp16's loss scales [2**-24, 2**127]"
    return None


def _is_number(value: Any, integer: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) if integer else math.isfinite(value)


def _is_tracker(tracker: Any) -> bool:
    return (
        isinstance(tracker, dict)
        and _is_number(tracker.get("buffer_size"), integer=True)
        and tracker["buffer_size"] >= 1
        and _is_number(tracker.get("min_count"), integer=True)
        and isinstance(tracker.get("history"), dict)
        and all(
            isinstance(rewards, list) and all(_is_number(r) for r in rewards) for rewards in tracker["history"].values()
        )
    )
