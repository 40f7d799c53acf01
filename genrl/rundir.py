"""The run directory: config.json, metrics.jsonl, samples/, checkpoints/, TensorBoard events.

Every file is written atomically (written beside, then renamed), so a crash leaves the previous version.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def image_grid(images: torch.Tensor, captions: list[str], columns: int = 4) -> Image.Image:
    """(B, 3, H, W) in [0, 1] -> one PIL image, each tile captioned underneath."""
    arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    n, h, w, _ = arrays.shape
    columns = min(columns, n)
    rows, caption_h = math.ceil(n / columns), 12
    grid = Image.new("RGB", (columns * w, rows * (h + caption_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (array, caption) in enumerate(zip(arrays, captions)):
        x, y = (i % columns) * w, (i // columns) * (h + caption_h)
        grid.paste(Image.fromarray(array), (x, y))
        draw.text((x + 1, y + h), caption[: max(1, w // 6)], fill="black")
    return grid


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.samples = self.path / "samples"
        self.checkpoints = self.path / "checkpoints"
        self._writer = None

    def create(self, config: dict[str, Any]) -> None:
        for folder in (self.path, self.samples, self.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "config.json", json.dumps(config, indent=2) + "\n")

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.path / "tensorboard"))
        return self._writer

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def keep_metrics_before(self, epoch: int) -> None:
        """On resume: forget epochs the checkpoint does not cover (they will be run again)."""
        kept = [m for m in self.read_metrics() if m["epoch"] < epoch]
        atomic_write_text(self.metrics_path, "".join(json.dumps(m) + "\n" for m in kept))

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        for key, value in metrics.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, metrics["epoch"])
            elif isinstance(value, dict):  # e.g. reward_parts: one curve per part
                for name, v in value.items():
                    self.writer.add_scalar(f"{key}/{name}", v, metrics["epoch"])
        self.writer.flush()

    def save_samples(
        self, epoch: int, images: torch.Tensor, prompts: list[str], rewards: torch.Tensor, suffix: str = ""
    ) -> Path:
        grid = image_grid(images, [f"{r:.2f} {p}" for p, r in zip(prompts, rewards.tolist())])
        path = self.samples / f"epoch-{epoch:04d}{suffix}.png"
        tmp = path.with_name(f".{path.name}.tmp")
        grid.save(tmp, format="PNG")
        os.replace(tmp, path)
        captions = [{"prompt": p, "reward": r} for p, r in zip(prompts, rewards.tolist())]
        atomic_write_text(path.with_suffix(".json"), json.dumps(captions, indent=1) + "\n")
        self.writer.add_image(f"samples{suffix}", np.asarray(grid), epoch, dataformats="HWC")
        self.writer.add_text(f"sample_prompts{suffix}", " | ".join(prompts), epoch)
        return path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
