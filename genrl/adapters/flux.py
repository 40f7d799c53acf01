"""FLUX.1 transformers (``flux``): rectified flow (a velocity) on 2 x 2-packed latents, T5's token states and CLIP's
pooled prompt, rotary positions from the image and text ids, guidance as an embedding of the transformer (FLUX.1
[dev]: one pass a step, no doubled batch), FLUX's resolution-shifted sigmas and its VAE scale and shift.

The env's latents stay unpacked, (B, C, h, w) with C = in_channels / 4, as every other model's: the observation and
action spaces, the noise, the sampler's elementwise step and the decode are the same as for SD3. ``predict`` packs
them into the transformer's (B, h/2 * w/2, 4C) tokens and unpacks its output, as ``FluxPipeline`` does around its
loop; packing only moves values, so the chain is the pipeline's bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from genrl.adapters.base import FlowTransformerAdapter, pack_text, unpack_text
from genrl.adapters.sd3 import quieter

MAX_SEQUENCE_LENGTH = 512
"""T5 tokens of a prompt: ``FluxPipeline``'s default (and largest) ``max_sequence_length``."""
DEFAULT_SAMPLE_SIZE = 128
"""``FluxPipeline.default_sample_size``: hard-coded in the pipeline (the transformer's config has no sample size),
so its default image is 128 * vae_scale a side (1024 px for FLUX.1)."""
PACK = 2
"""The pipeline packs 2 x 2 latent pixels into one token."""


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C), the layout of ``FluxPipeline._pack_latents``: each token is a 2 x 2
    patch, channels outermost, then the patch's row and column."""
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // PACK, PACK, width // PACK, PACK)
    patches = patches.permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // PACK) * (width // PACK), channels * PACK * PACK)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``pack_latents``' inverse (``FluxPipeline._unpack_latents``, given the latent size rather than the image's)."""
    batch, _, features = tokens.shape
    channels = features // (PACK * PACK)
    patches = tokens.view(batch, height // PACK, width // PACK, channels, PACK, PACK)
    patches = patches.permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, channels, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(h * w, 3) position ids of the packed tokens, row-major: channel 0 is 0, channel 1 the row, channel 2 the
    column (``FluxPipeline._prepare_latent_image_ids``: built in fp32, then cast)."""
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(height)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width)[None, :]
    return ids.reshape(height * width, 3).to(device=device, dtype=dtype)


class FluxAdapter(FlowTransformerAdapter):
    name = "flux"
    embedded_guidance = True
    export_pipeline = FluxPipeline

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        return isinstance(getattr(pipeline, "transformer", None), FluxTransformer2DModel)

    # ------------------------------------------------------------------------------------------
    # The latent space
    # ------------------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        """The VAE's channels: the transformer's input is 2 x 2 of them packed into each token."""
        return self.denoiser.config.in_channels // (PACK * PACK)

    def default_resolution(self) -> int:
        return DEFAULT_SAMPLE_SIZE * self.vae_scale

    def latent_multiple(self) -> int:
        """The latent is packed into 2 x 2 patches, each of ``patch_size`` (1 for FLUX.1) squared tokens."""
        return PACK * self.denoiser.config.patch_size

    def flow_schedule_options(self, config: Any, num_steps: int, latent_size: int) -> dict[str, Any]:
        """``FluxPipeline``'s schedule: explicit sigmas from 1 to 1/N (evenly spaced, before the shift), and where the
        config shifts by resolution (``use_dynamic_shifting``, FLUX.1's) the shift ``mu`` from the packed token count,
        with FLUX's defaults for what the config leaves out."""
        options: dict[str, Any] = {}
        if not config.get("use_flow_sigmas", False):  # the pipeline drops its sigmas for such a scheduler
            options["sigmas"] = np.linspace(1.0, 1 / num_steps, num_steps)
        if config.get("use_dynamic_shifting", False):
            tokens = (latent_size // PACK) ** 2
            options["mu"] = calculate_shift(
                tokens,
                config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096),
                config.get("base_shift", 0.5),
                config.get("max_shift", 1.15),
            )
        return options

    # ------------------------------------------------------------------------------------------
    # Text
    # ------------------------------------------------------------------------------------------
    def t5_tokens(self) -> int:
        """The T5 tokens a prompt gets: the pipeline's default ``max_sequence_length``, or fewer where the T5
        tokenizer takes fewer (its ``model_max_length``: the tiny FLUX's takes 32)."""
        return min(MAX_SEQUENCE_LENGTH, self.pipeline.tokenizer_2.model_max_length)

    def text_shape(self) -> tuple[int, int]:
        """T5's tokens and CLIP's pooled row (``pack_text``), as wide as the transformer's joint attention."""
        return (self.t5_tokens() + 1, self.denoiser.config.joint_attention_dim)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The pipeline's own text encoding (T5's last states, CLIP's pooled output), packed (``pack_text``)."""
        tokens = self.t5_tokens()
        # A T5 tokenizer that takes fewer tokens than diffusers' default cuts every long prompt by design: the
        # pipeline's warning that prints each cut-off part says nothing then.
        by_design = tokens < MAX_SEQUENCE_LENGTH
        with quieter(logging.getLogger(type(self.pipeline).__module__)) if by_design else contextlib.nullcontext():
            embeds, pooled, _ = self.pipeline.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                device=self.denoiser.device,
                num_images_per_prompt=1,
                max_sequence_length=tokens,
            )
        return pack_text(embeds, pooled)

    def negative_text(self) -> torch.Tensor:
        """The empty prompt. Guidance is embedded, so no step reads it; the env's observations carry it all the
        same."""
        return self.encode_prompts([""])

    # ------------------------------------------------------------------------------------------
    # The denoiser
    # ------------------------------------------------------------------------------------------
    def timestep(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """What the pipeline passes the transformer for sigma ``t``: its scheduler's timestep (sigma *
        num_train_timesteps, in float32 as ``set_timesteps`` multiplies it), cast to the latents' dtype and divided
        by 1000 (the transformer multiplies by 1000 again). sigma * 1000 / 1000 is not always sigma in float32: this
        is the pipeline's value bit for bit."""
        scheduler_timestep = t.to(torch.float32) * self.pipeline.scheduler.config.num_train_timesteps
        return scheduler_timestep.to(dtype) / 1000

    def predict(
        self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """The velocity at sigma ``t`` on unpacked ``latents``: packed into tokens with their position ids, the
        guidance scale embedded where the transformer is guidance-distilled (``guidance_embeds``), unpacked again."""
        net = self.denoiser
        embeds, pooled = unpack_text(text, net.config.pooled_projection_dim)
        batch, _, height, width = latents.shape
        guidance = None
        if net.config.guidance_embeds:
            guidance = torch.full((batch,), guidance_scale, device=latents.device, dtype=torch.float32)
        velocity = self.call_denoiser(
            hidden_states=pack_latents(latents),
            timestep=self.timestep(t, latents.dtype),
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=latents.device, dtype=embeds.dtype),
            img_ids=image_ids(height // PACK, width // PACK, latents.device, latents.dtype),
        )
        return unpack_latents(velocity, height, width)
