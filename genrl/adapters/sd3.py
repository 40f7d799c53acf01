"""Stable Diffusion 3 / 3.5 MMDiT transformers (``sd3``): rectified flow (a velocity), three text encoders (two
CLIPs and T5; the pooled CLIP embedding rides as the last row of the text tensor, ``pack_text``), the transformer
conditioned on sigma * num_train_timesteps, classifier-free guidance by a doubled batch, SD3's VAE scale and shift.
The embedded shapes flow model is one."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

from genrl.adapters.base import FlowTransformerAdapter, pack_text, unpack_text

MAX_SEQUENCE_LENGTH = 256
"""T5 tokens of a prompt: ``StableDiffusion3Pipeline``'s default ``max_sequence_length``."""
FLOW_GRPO_LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)
"""Flow-GRPO's LoRA layers on SD3: both streams of every joint attention, the image's (to_*) and the text's (add_*,
to_add_out). genrl's default (to_q, to_k, to_v, to_out.0) is the image stream's alone; --lora-target-modules takes
these."""


@contextlib.contextmanager
def quieter(logger: logging.Logger):
    """``logger`` passes errors only, for the duration."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class SD3Adapter(FlowTransformerAdapter):
    name = "sd3"
    export_pipeline = StableDiffusion3Pipeline

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return isinstance(getattr(pipeline, "transformer", None), SD3Transformer2DModel)

    def latent_multiple(self) -> int:
        """The transformer cuts the latent into patches."""
        return self.denoiser.config.patch_size

    def largest_latent(self) -> int | None:
        """SD3's patch embedding crops a position embedding of ``pos_embed_max_size`` patches a side (diffusers
        raises past it); without one it computes positions for any size."""
        patches = self.denoiser.config.get("pos_embed_max_size")
        return None if patches is None else patches * self.denoiser.config.patch_size

    def flow_schedule_options(self, config: Any, num_steps: int, latent_size: int) -> dict[str, Any]:
        """Where the config shifts by resolution (``use_dynamic_shifting``, SD3.5's variants), ``mu`` from the
        image's sequence length as the SD3 pipeline computes it."""
        if not config.get("use_dynamic_shifting", False):
            return {}
        seq_len = (latent_size // self.denoiser.config.patch_size) ** 2
        mu = calculate_shift(
            seq_len,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.16),
        )
        return {"mu": mu}

    def t5_tokens(self) -> int:
        """The T5 tokens a prompt gets: diffusers' default ``max_sequence_length``, or fewer where the T5 tokenizer
        takes fewer (its ``model_max_length``: the embedded shapes model's T5 returns zeros, and the model reads one
        zero token as it reads 256), or none without a T5 encoder."""
        if getattr(self.pipeline, "text_encoder_3", None) is None:
            return 0
        return min(MAX_SEQUENCE_LENGTH, self.pipeline.tokenizer_3.model_max_length)

    def text_shape(self) -> tuple[int, int]:
        """CLIP's tokens, T5's, and the pooled row (``pack_text``), as wide as the transformer's joint attention."""
        net = self.denoiser
        return (self.pipeline.tokenizer_max_length + self.t5_tokens() + 1, net.config.joint_attention_dim)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The pipeline's own text encoding (both CLIPs, T5), packed (``pack_text``)."""
        tokens = self.t5_tokens()
        # A T5 tokenizer that takes fewer tokens than diffusers' default cuts every prompt by design: the pipeline's
        # warning that prints each cut-off part (a screenful per batch) says nothing then.
        by_design = tokens < MAX_SEQUENCE_LENGTH
        with quieter(logging.getLogger(type(self.pipeline).__module__)) if by_design else contextlib.nullcontext():
            embeds, _, pooled, _ = self.pipeline.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                prompt_3=None,
                device=self.denoiser.device,
                do_classifier_free_guidance=False,
                max_sequence_length=tokens,
            )
        return pack_text(embeds, pooled)

    def predict(
        self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """The velocity at sigma ``t``: the transformer is conditioned on sigma * num_train_timesteps, the
        scheduler's own timestep (``FlowMatchEulerDiscreteScheduler.set_timesteps`` multiplies the same float32
        values)."""
        embeds, pooled = unpack_text(text, self.denoiser.config.pooled_projection_dim)
        timestep = t * self.pipeline.scheduler.config.num_train_timesteps
        return self.call_denoiser(
            hidden_states=latents, timestep=timestep, encoder_hidden_states=embeds, pooled_projections=pooled
        )
