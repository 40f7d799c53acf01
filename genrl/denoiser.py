"""Which network of a pipeline is the denoiser that a policy trains: its UNet, or its transformer.

Stable Diffusion 1.x and its LCMs denoise with a UNet (``pipe.unet``); Stable Diffusion 3 and FLUX with a
transformer (``pipe.transformer``). Everything that reads "the trainable network" (LoRA, the env's latent shape,
checkpoints, mixed precision) asks ``denoiser(pipe)``, so that neither kind is special anywhere else.
"""

from __future__ import annotations

from typing import Any

import torch


def denoiser(pipeline: Any) -> torch.nn.Module:
    """``pipeline.transformer`` where the pipeline has one (SD3, FLUX), else ``pipeline.unet``."""
    transformer = getattr(pipeline, "transformer", None)
    return transformer if transformer is not None else pipeline.unet
