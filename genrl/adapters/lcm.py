"""Latent consistency model UNets (``lcm``): an SD 1.x UNet distilled to a consistency model, guidance w fed as an
embedding (``time_cond_proj_dim``), w = guidance_scale - 1, one pass a step. The embedded shapes LCM is one."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from genrl.adapters.base import ModelAdapter


class LCMAdapter(ModelAdapter):
    name = "lcm"
    model_kind = "consistency"
    embedded_guidance = True
    export_pipeline = StableDiffusionPipeline  # a UNet LoRA, as for any SD 1.x pipeline

    def __init__(self, pipeline: Any):
        super().__init__(pipeline)
        self._w_embeddings: dict[float, torch.Tensor] = {}

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        unet = getattr(pipeline, "unet", None)
        return (
            unet is not None
            and getattr(pipeline, "text_encoder_2", None) is None
            and unet.config.get("time_cond_proj_dim") is not None
        )

    def w_embedding(self, guidance_scale: float) -> torch.Tensor:
        """(1, time_cond_proj_dim): the pipeline's own embedding of w = guidance_scale - 1, computed as its __call__
        does (on the CPU), once per scale."""
        if guidance_scale not in self._w_embeddings:
            w = torch.tensor([guidance_scale - 1.0])
            dim = self.denoiser.config.time_cond_proj_dim
            self._w_embeddings[guidance_scale] = self.pipeline.get_guidance_scale_embedding(w, embedding_dim=dim)
        return self._w_embeddings[guidance_scale]

    def predict(
        self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        cond = self.w_embedding(guidance_scale).to(latents).repeat(latents.shape[0], 1)
        return self.call_denoiser(latents, t, text, timestep_cond=cond)
