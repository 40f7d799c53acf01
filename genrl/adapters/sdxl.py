"""Stable Diffusion XL UNets (``sdxl``): two CLIP text encoders whose penultimate token states the UNet attends to
side by side, and SDXL's "text_time" added conditioning (the second encoder's pooled prompt and six size and crop
numbers), epsilon or v prediction, classifier-free guidance by a doubled batch, SDXL's VAE scaling.

The text tensor is the pipeline's own ``encode_prompt`` output: the token embeddings of both encoders concatenated
on the feature axis, with the pooled embedding as a last row (``pack_text``), so the buffer keeps one tensor per
prompt as it does for Stable Diffusion 1.x.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

from genrl.adapters.base import ModelAdapter, pack_text, unpack_text

TIME_IDS = 6
"""SDXL's micro-conditioning numbers: original (height, width), crop corner (top, left), target (height, width)."""


class SDXLAdapter(ModelAdapter):
    name = "sdxl"
    model_kind = "diffusion"
    export_pipeline = StableDiffusionXLPipeline
    lora_layers = "unet"

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        """A UNet with SDXL's added conditioning, and the second (projecting) text encoder that feeds it."""
        unet = getattr(pipeline, "unet", None)
        return (
            unet is not None
            and unet.config.get("addition_embed_type") == "text_time"
            and getattr(pipeline, "text_encoder_2", None) is not None
        )

    # ------------------------------------------------------------------------------------------
    # What the UNet expects of the text
    # ------------------------------------------------------------------------------------------
    def _text_encoders(self) -> list[Any]:
        """The encoders ``encode_prompt`` runs, in its order (a refiner-style pipeline has the second one only)."""
        first = getattr(self.pipeline, "text_encoder", None)
        return [encoder for encoder in (first, self.pipeline.text_encoder_2) if encoder is not None]

    def _tokenizer(self) -> Any:
        tokenizer = getattr(self.pipeline, "tokenizer", None)
        return tokenizer if tokenizer is not None else self.pipeline.tokenizer_2

    def _token_width(self) -> int:
        """The concatenated penultimate states' width: the encoders' hidden sizes summed."""
        return sum(encoder.config.hidden_size for encoder in self._text_encoders())

    def _pooled_width(self) -> int:
        """The pooled prompt's width: ``text_encoder_2``'s projection (``encode_prompt`` takes its 2-D output)."""
        return self.pipeline.text_encoder_2.config.projection_dim

    def check(self) -> None:
        """What the pipeline checks only when sampling (its ``_get_add_time_ids``), and what ``pack_text`` needs."""
        unet = self.denoiser
        if unet.config.get("time_cond_proj_dim") is not None:
            # A guidance-distilled (LCM-SDXL) UNet takes w as an embedding; predict never passes one.
            raise ValueError(
                "this SDXL UNet takes a guidance embedding (time_cond_proj_dim, an LCM-SDXL); the sdxl adapter drives "
                "classifier-free guided SDXL UNets only"
            )
        width, pooled = self._token_width(), self._pooled_width()
        if width != unet.config.cross_attention_dim:
            raise ValueError(
                f"the text encoders' states are {width} wide together and the UNet attends to "
                f"{unet.config.cross_attention_dim}; they must agree"
            )
        tokenizers = (getattr(self.pipeline, "tokenizer", None), self.pipeline.tokenizer_2)
        lengths = {tokenizer.model_max_length for tokenizer in tokenizers if tokenizer is not None}
        if len(lengths) != 1:
            raise ValueError(f"the two tokenizers pad to different lengths {sorted(lengths)}; SDXL concatenates them")
        if pooled > width:  # pack_text puts the pooled embedding in a row of the token embeddings
            raise ValueError(f"the pooled text embedding ({pooled} wide) is wider than the token embeddings ({width})")
        expected = unet.config.addition_time_embed_dim * TIME_IDS + pooled
        got = unet.add_embedding.linear_1.in_features
        if expected != got:
            # As StableDiffusionXLPipeline._get_add_time_ids refuses it (a refiner takes 5 numbers, not 6).
            raise ValueError(
                f"the UNet's added embedding takes {got} inputs, and {TIME_IDS} time ids of "
                f"{unet.config.addition_time_embed_dim} plus the {pooled}-wide pooled prompt give {expected}: not an "
                "SDXL base UNet"
            )

    # ------------------------------------------------------------------------------------------
    # Text
    # ------------------------------------------------------------------------------------------
    def text_shape(self) -> tuple[int, int]:
        """The tokens of both encoders side by side, and the pooled row (``pack_text``)."""
        return (self._tokenizer().model_max_length + 1, self._token_width())

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The pipeline's own text encoding (penultimate states of both encoders, the second one's projected pooled
        output), packed (``pack_text``). Without guidance: the negatives are ``negative_text``'s."""
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            device=self.denoiser.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return pack_text(embeds, pooled)

    def negative_text(self) -> torch.Tensor:
        """What the pipeline guides against when no negative prompt is given: zeros for both the tokens and the
        pooled prompt where its config sets ``force_zeros_for_empty_prompt`` (SDXL base does), else the encoded
        empty prompt."""
        if self.pipeline.config.get("force_zeros_for_empty_prompt", True):
            net = self.denoiser
            return torch.zeros((1, *self.text_shape()), device=net.device, dtype=self.pipeline.text_encoder_2.dtype)
        return self.encode_prompts([""])

    # ------------------------------------------------------------------------------------------
    # The denoiser
    # ------------------------------------------------------------------------------------------
    def time_ids(self, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, 6): the pipeline's defaults, original and target size = the image's, crop corner (0, 0), in the prompt
        embeddings' dtype as ``_get_add_time_ids`` makes them."""
        height, width = (side * self.vae_scale for side in latents.shape[-2:])
        ids = torch.tensor([height, width, 0, 0, height, width], dtype=dtype, device=latents.device)
        return ids.repeat(latents.shape[0], 1)

    def predict(
        self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """The UNet at the integer timestep ``t``, conditioned on the token states and, through its added embedding,
        on the pooled prompt and the time ids."""
        embeds, pooled = unpack_text(text, self._pooled_width())
        added = {"text_embeds": pooled, "time_ids": self.time_ids(latents, embeds.dtype)}
        return self.call_denoiser(latents, t, encoder_hidden_states=embeds, added_cond_kwargs=added)

    # ------------------------------------------------------------------------------------------
    # Images
    # ------------------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, 3, H, W) in [0, 1], as the SDXL pipeline decodes: un-normalised by the VAE's
        ``latents_mean``/``latents_std`` where its config has them, else divided by its scaling factor; and with the
        VAE in fp32 where it is fp16 and ``force_upcast`` is set (SDXL's original VAE overflows in fp16)."""
        vae = self.pipeline.vae
        config = vae.config
        upcast = vae.dtype == torch.float16 and config.get("force_upcast", False)
        if upcast:
            vae.to(torch.float32)
        try:
            latents = latents.to(vae.dtype)
            mean, std = config.get("latents_mean"), config.get("latents_std")
            if mean is not None and std is not None:
                mean = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
                std = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
                latents = latents * std / config.scaling_factor + mean
            else:
                latents = latents / config.scaling_factor
            images = vae.decode(latents).sample
        finally:
            if upcast:
                vae.to(torch.float16)
        images = images.to(torch.promote_types(images.dtype, torch.float32))  # half -> float; float64 stays
        return (images / 2 + 0.5).clamp(0, 1)
