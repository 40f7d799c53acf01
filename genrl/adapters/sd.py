"""Stable Diffusion 1.x/2.x style UNets (``sd``): one CLIP text encoder, epsilon or v prediction, classifier-free
guidance by a doubled batch. The embedded shapes teacher is one."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from genrl.adapters.base import ModelAdapter


class SDAdapter(ModelAdapter):
    name = "sd"
    model_kind = "diffusion"
    export_pipeline = StableDiffusionPipeline

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        unet = getattr(pipeline, "unet", None)
        return (
            unet is not None
            and getattr(pipeline, "text_encoder_2", None) is None
            and unet.config.get("time_cond_proj_dim") is None
        )

    def predict(
        self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        return self.call_denoiser(latents, t, text)
