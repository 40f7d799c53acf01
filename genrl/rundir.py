"""The run directory: config.json, metrics.jsonl, samples/, checkpoints/, TensorBoard events; the trackers of
--log-with (genrl/trackers.py) get the same metrics and sample grids.

Every file is written atomically (written beside, then renamed), so a crash leaves the previous version.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from genrl.errors import GenrlError
from genrl.images import pil_images
from genrl.trackers import Trackers, scalars

MAX_CAPTION_LINES = 8
"""Sample-grid captions are cut to this many lines: a prompt of any length draws a grid of bounded size."""


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:  # after a failed write (a full disk) nothing half-written is left beside the file
        tmp.unlink(missing_ok=True)


def image_grid(images: torch.Tensor, captions: list[str], columns: int = 4) -> Image.Image:
    """(B, 3, H, W) in [0, 1] -> one PIL image, each tile with its caption underneath, wrapped to its width and cut
    to ``MAX_CAPTION_LINES`` lines."""
    n, _, h, w = images.shape
    columns = min(columns, n)
    # PIL's default bitmap font is 6 pixels a character and 11 a line.
    width = max(1, w // 6)
    wrapped = [
        textwrap.wrap(caption[: width * MAX_CAPTION_LINES + 1], width, max_lines=MAX_CAPTION_LINES, placeholder="..")
        or [""]
        for caption in captions
    ]
    rows, caption_h = math.ceil(n / columns), 11 * max(len(lines) for lines in wrapped) + 1
    grid = Image.new("RGB", (columns * w, rows * (h + caption_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, lines) in enumerate(zip(pil_images(images), wrapped)):
        x, y = (i % columns) * w, (i // columns) * (h + caption_h)
        grid.paste(image, (x, y))
        draw.multiline_text((x + 1, y + h), "\n".join(lines), fill="black", spacing=0)
    return grid


def _record_problem(record: Any) -> str | None:
    """Why a parsed metrics.jsonl line is not a record ``log_metrics`` writes: an object with a whole epoch >= 0,
    whose values are numbers, null, or objects of numbers (a composite reward's parts)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    epoch = record.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        return f"epoch {epoch!r} is not a whole number >= 0"
    for key, value in record.items():
        values = value.values() if isinstance(value, dict) else [value]
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
            return f"'{key}' is {str(value)[:40]}, not a number"
    return None


def sample_grid_name(epoch: int, suffix: str = "") -> str:
    """The file in ``samples/`` of ``epoch``'s grid: ``suffix`` "-eval" for the fixed evaluation set's first batch."""
    return f"epoch-{epoch:04d}{suffix}.png"


class RunDirInUse(GenrlError):
    """Another process holds the run directory's lock."""


class RunDir:
    def __init__(self, path: Path, log_with: tuple[str, ...] = ("tensorboard",)):
        self.path = Path(path)
        self.tensorboard = "tensorboard" in log_with
        self.trackers = Trackers(log_with, self.path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.samples = self.path / "samples"
        self.checkpoints = self.path / "checkpoints"
        self._writer = None
        self._lock: IO[str] | None = None

    def lock(self) -> None:
        """Create the directory and hold an OS lock on it until ``close``: a second run on it is refused. The OS
        drops the lock when its process dies, so the lock of a killed run is taken over, never stale."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = (self.path / ".lock").open("a+", encoding="utf-8")
        except OSError as exc:
            raise GenrlError(
                f"cannot create the run directory {self.path} ({exc.strerror or exc}); pass a writable --output-dir"
            ) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirInUse(
                f"run directory {self.path} is in use by another run (process {holder}); wait for it to end or "
                "pick another --run-name"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def holds_progress(self) -> bool:
        """Whether a run logged an epoch or saved a checkpoint here (then only ``--resume`` may continue it)."""
        saved = (self.checkpoints / "latest").is_symlink() or any(self.checkpoints.glob("epoch-*"))
        return saved or bool(self.read_metrics())

    def create(self, config: dict[str, Any]) -> None:
        """The folders and config.json; then the trackers' runs start, given the configuration."""
        for folder in (self.path, self.samples, self.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "config.json", json.dumps(config, indent=2) + "\n")
        self.trackers.start(config)

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.path / "tensorboard"))
        return self._writer

    def read_metrics(self) -> list[dict[str, Any]]:
        """The logged epochs. A torn last line (the process died mid-write: power loss, full disk) is dropped
        with a warning, as that epoch will be run again; damage anywhere else is an error."""
        if not self.metrics_path.exists():
            return []
        try:
            text = self.metrics_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise GenrlError(
                f"{self.metrics_path} is unreadable ({exc.strerror}); restore it as the run's metrics file"
            ) from None
        lines = [line for line in text.splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except ValueError:
                if number < len(lines):
                    raise GenrlError(
                        f"{self.metrics_path} line {number} is damaged; repair or delete that line, then --resume"
                    ) from None
                print(f"warning: {self.metrics_path} ends in a torn line; dropped it", file=sys.stderr)
                continue
            problem = _record_problem(record)
            if problem is not None:
                raise GenrlError(
                    f"{self.metrics_path} line {number} is not an epoch's record ({problem}); repair or delete that "
                    "line, then --resume"
                )
            records.append(record)
        return records

    def keep_metrics_before(self, epoch: int) -> None:
        """On resume: forget epochs the checkpoint does not cover (they will be run again)."""
        kept = [m for m in self.read_metrics() if m["epoch"] < epoch]
        atomic_write_text(self.metrics_path, "".join(json.dumps(m) + "\n" for m in kept))

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        values = scalars(metrics)  # reward_parts: one curve per part
        if self.tensorboard:
            for key, value in values.items():
                self.writer.add_scalar(key, value, metrics["epoch"])
            self.writer.flush()
        self.trackers.log(values, metrics["epoch"])

    def save_samples(
        self, epoch: int, images: torch.Tensor, prompts: list[str], rewards: torch.Tensor, suffix: str = ""
    ) -> Path:
        grid = image_grid(images, [f"{r:.2f} {p}" for p, r in zip(prompts, rewards.tolist())])
        path = self.samples / sample_grid_name(epoch, suffix)
        tmp = path.with_name(f".{path.name}.tmp")
        grid.save(tmp, format="PNG")
        os.replace(tmp, path)
        captions = [{"prompt": p, "reward": r} for p, r in zip(prompts, rewards.tolist())]
        atomic_write_text(path.with_suffix(".json"), json.dumps(captions, indent=1) + "\n")
        if self.tensorboard:
            self.writer.add_image(f"samples{suffix}", np.asarray(grid), epoch, dataformats="HWC")
            self.writer.add_text(f"sample_prompts{suffix}", " | ".join(prompts), epoch)
        self.trackers.log_image(f"samples{suffix}", np.asarray(grid), epoch)
        return path

    def close(self, failed: bool = False) -> None:
        self.trackers.finish(failed)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close(failed=exc_info[0] is not None)
