"""JPEG (in)compressibility, as DDPO and RLCM define it: the JPEG size at quality 95, in kB."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8, rounding as the reference code does."""
    return (images.detach() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def jpeg_size_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    sizes = []
    for array in to_uint8(images):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000)
    return torch.tensor(sizes, dtype=torch.float32)


def jpeg_incompressibility(images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
    """Larger JPEG files score higher (noise-like images win)."""
    return jpeg_size_kb(images)


def jpeg_compressibility(images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
    """Smaller JPEG files score higher (flat images win)."""
    return -jpeg_size_kb(images)
