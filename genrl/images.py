"""Image tensors as pictures: the one conversion that sample grids, reward models and the reward client share."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def pil_images(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> B 8-bit RGB PIL images (rounded), as the reward models' own processors take them."""
    arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]
