"""What a model adapter is: everything that differs between model architectures, behind one interface.

An adapter wraps a loaded diffusers pipeline. It encodes prompts into one text tensor per prompt (what the env
stores in its observations and the buffer keeps once per trajectory), calls the denoiser in the model's own
parameterization, applies classifier-free guidance the model's way, decodes latents to images, and exports a LoRA
for its pipeline class. It knows nothing of the sampler's step maths (``genrl.samplers``); a policy pairs the two.

    predict(latents, t, text, guidance_scale)   one denoiser pass: epsilon, v or a velocity, as ``prediction_type``
    guided(latents, t, text, negative, scale)   the prediction a sampler steps with, guidance applied
    add_noise(x0, noise, t), target(x0, noise, t)   the forward process and the prediction it trains towards, for
                                                  denoising / flow-matching losses (DiffusionNFT, Diffusion-DPO)
    clean_estimate(x_t, prediction, t)          the clean latent a prediction implies (DiffusionNFT's x0 regression)
    decode(latents), encode(images)             latents <-> images in [0, 1], each the other's inverse convention

``t`` is in the sampler's units: an integer timestep for diffusion models, a float sigma in [0, 1] for flow models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from peft.utils import get_peft_model_state_dict

from genrl.precision import autocast
from genrl.steps import per_sample

ModelKind = Literal["consistency", "diffusion", "flow"]


class ModelAdapter:
    name: ClassVar[str]
    """The adapter's name in ``genrl.adapters.ADAPTERS``."""
    model_kind: ClassVar[ModelKind]
    """What the model is, for the pairing with a sampler (``Sampler.model_kind``)."""
    embedded_guidance: ClassVar[bool] = False
    """Guidance is an input of the denoiser (LCM's w-embedding, FLUX's guidance embedding), one pass a step; else
    classifier-free guidance by a doubled batch."""
    denoiser_attr: ClassVar[str] = "unet"
    """The pipeline attribute that holds the trainable denoiser: ``unet`` or ``transformer``."""
    denoiser_kind: ClassVar[str] = "UNet"
    """What the denoiser is, for messages."""
    export_pipeline: ClassVar[type]
    """The diffusers pipeline class whose ``load_lora_weights`` reads this adapter's LoRA export."""
    lora_layers: ClassVar[str] = "unet"
    """The LoRA's name in the export (``save_lora_weights``' ``<name>_lora_layers``)."""

    autocast_dtype: torch.dtype | None = None
    """``--mixed-precision``'s half dtype, which ``predict`` runs the denoiser in (None: the weights' own)."""

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline

    @classmethod
    def matches(cls, pipeline: Any) -> bool:
        """Whether ``pipeline`` is a model of this architecture."""
        raise NotImplementedError

    def check(self) -> None:
        """A ``ValueError`` for a pipeline of this architecture that the adapter still cannot drive."""

    # ------------------------------------------------------------------------------------------
    # The latent space
    # ------------------------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipeline, self.denoiser_attr)

    @property
    def prediction_type(self) -> str:
        """epsilon or v_prediction (the scheduler's ``prediction_type``), or flow (a velocity)."""
        return self.pipeline.scheduler.config.get("prediction_type", "epsilon")

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.pipeline.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.denoiser.config.in_channels

    def default_resolution(self) -> int:
        return self.denoiser.config.sample_size * self.vae_scale

    def latent_multiple(self) -> int:
        """How many times the denoiser shrinks the latent: the UNet halves it once per down block but the last."""
        return 2 ** (len(self.denoiser.config.block_out_channels) - 1)

    def largest_latent(self) -> int | None:
        """The largest latent side the denoiser takes; None for any (a UNet is convolutional)."""
        return None

    def init_noise_sigma(self) -> float:
        """The scale of the initial noise: the scheduler's."""
        return self.pipeline.scheduler.init_noise_sigma

    def flow_schedule_options(self, config: Any, num_steps: int, latent_size: int) -> dict[str, Any]:
        """A flow model's ``set_timesteps`` options as its pipeline passes them (the shift ``mu``, explicit sigmas)."""
        return {}

    # ------------------------------------------------------------------------------------------
    # Text
    # ------------------------------------------------------------------------------------------
    def text_shape(self) -> tuple[int, int]:
        """One prompt's text tensor: (tokens, width)."""
        return (self.pipeline.tokenizer.model_max_length, self.pipeline.text_encoder.config.hidden_size)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(B, *text_shape) text tensors, on the denoiser's device, in its dtype."""
        tok = self.pipeline.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.pipeline.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.pipeline.text_encoder(tok.input_ids.to(self.denoiser.device))[0]

    def negative_text(self) -> torch.Tensor:
        """(1, *text_shape): what classifier-free guidance conditions its unconditional pass on: the empty prompt."""
        return self.encode_prompts([""])

    # ------------------------------------------------------------------------------------------
    # The denoiser
    # ------------------------------------------------------------------------------------------
    def call_denoiser(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The denoiser's output, at least fp32: under autocast where mixed precision is on, cast up after it, so
        that every sampler's maths (mean, std, log-prob) run in fp32 (``genrl.precision``)."""
        with autocast(self.denoiser.device.type, self.autocast_dtype):
            prediction = self.denoiser(*args, **kwargs).sample
        return prediction.to(torch.promote_types(prediction.dtype, torch.float32))

    def predict(
        self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance_scale: float = 1.0
    ) -> torch.Tensor:
        """One denoiser pass on (B, C, h, w) ``latents`` at ``t`` (B,) with ``text`` (B, *text_shape), in the
        model's own parameterization. ``guidance_scale`` matters only where guidance is embedded."""
        raise NotImplementedError

    def guided(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        negative: torch.Tensor,
        guidance_scale: float,
    ) -> torch.Tensor:
        """The prediction a sampler steps with: embedded guidance in one pass, or classifier-free guidance on a
        doubled batch (unconditional, conditional), uncond + scale (cond - uncond), as the pipelines compute it."""
        if self.embedded_guidance or guidance_scale <= 1:
            return self.predict(latents, t, text, guidance_scale)
        both = self.predict(torch.cat([latents] * 2), torch.cat([t] * 2), torch.cat([negative, text]))
        uncond, cond = both.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    # ------------------------------------------------------------------------------------------
    # The forward process: for losses on (clean latent, t, noise)
    # ------------------------------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x0) with the given ``noise``: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise for a diffusion
        model (``DDPMScheduler.add_noise``), (1 - sigma) x0 + sigma noise for a flow model."""
        if self.model_kind == "flow":
            sigma = per_sample(t.to(x0.dtype), x0)
            return (1 - sigma) * x0 + sigma * noise
        abar = per_sample(self._alphas_cumprod(x0)[t], x0)
        return abar**0.5 * x0 + (1 - abar) ** 0.5 * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What ``predict`` should return at ``add_noise(x0, noise, t)``: the noise (epsilon), sqrt(abar) noise -
        sqrt(1 - abar) x0 (v, ``DDPMScheduler.get_velocity``), or noise - x0 (a flow model's velocity)."""
        if self.model_kind == "flow":
            return noise - x0
        if self.prediction_type == "v_prediction":
            abar = per_sample(self._alphas_cumprod(x0)[t], x0)
            return abar**0.5 * noise - (1 - abar) ** 0.5 * x0
        return noise

    def clean_estimate(self, x_t: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean latent x0 that ``prediction`` implies at ``x_t = add_noise(x0, noise, t)``: x_t - sigma v for a
        flow model, (x_t - sqrt(1 - abar) eps) / sqrt(abar) for epsilon, sqrt(abar) x_t - sqrt(1 - abar) v for v
        (``DDPMScheduler.step``'s ``pred_original_sample``). Affine in the prediction, so a mixture of predictions
        implies the same mixture of estimates."""
        if self.model_kind == "flow":
            return x_t - per_sample(t.to(x_t.dtype), x_t) * prediction
        abar = per_sample(self._alphas_cumprod(x_t)[t], x_t)
        if self.prediction_type == "v_prediction":
            return abar**0.5 * x_t - (1 - abar) ** 0.5 * prediction
        return (x_t - (1 - abar) ** 0.5 * prediction) / abar**0.5

    def _alphas_cumprod(self, like: torch.Tensor) -> torch.Tensor:
        return self.pipeline.scheduler.alphas_cumprod.to(like.device, like.dtype)

    # ------------------------------------------------------------------------------------------
    # Images and exports
    # ------------------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, 3, H, W) in [0, 1]. Differentiable; wrap in no_grad where no gradient is wanted."""
        vae = self.pipeline.vae
        images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        images = images.to(torch.promote_types(images.dtype, torch.float32))  # half -> float; float64 stays
        return (images / 2 + 0.5).clamp(0, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> latents, ``decode``'s inverse convention: the VAE posterior's mean (no
        sampling) of 2x - 1, times the scaling factor. At least fp32, on the VAE's device. Differentiable; wrap in
        no_grad where no gradient is wanted."""
        return self.posterior_mean(images) * self.pipeline.vae.config.scaling_factor

    def posterior_mean(self, images: torch.Tensor) -> torch.Tensor:
        """The VAE encoder's posterior mean of images in [0, 1] (mapped to [-1, 1]), unscaled, at least fp32."""
        vae = self.pipeline.vae
        mean = vae.encode(images.to(vae.device, vae.dtype) * 2 - 1).latent_dist.mean
        return mean.to(torch.promote_types(mean.dtype, torch.float32))

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The denoiser's LoRA in the keys ``export_pipeline.load_lora_weights`` reads."""
        from diffusers.utils import convert_state_dict_to_diffusers

        return convert_state_dict_to_diffusers(get_peft_model_state_dict(self.denoiser))

    def save_lora(self, folder: Path) -> None:
        """The LoRA as ``export_pipeline.load_lora_weights(folder)`` reads it. The adapter's config travels in the
        file's metadata: without it diffusers rebuilds the LoRA at lora_alpha = rank, which scales a rank-16,
        alpha-32 adapter to half its trained strength."""
        net = self.denoiser
        self.export_pipeline.save_lora_weights(
            folder,
            **{
                f"{self.lora_layers}_lora_layers": self.lora_state_dict(),
                f"{self.lora_layers}_lora_adapter_metadata": net.peft_config["default"].to_dict(),
            },
            safe_serialization=True,
        )


class FlowTransformerAdapter(ModelAdapter):
    """What SD3 and FLUX share: a transformer predicting the rectified flow's velocity, a pooled text embedding that
    rides as the last row of the text tensor (``pack_text``), unit initial noise, the VAE's scale and shift, and a
    LoRA exported in PEFT's own keys (their loaders read them; converted, to_q would become a UNet processor's
    to_q_lora)."""

    model_kind = "flow"
    denoiser_attr = "transformer"
    denoiser_kind = "transformer"
    lora_layers = "transformer"

    @property
    def prediction_type(self) -> str:
        return "flow"

    def check(self) -> None:
        pooled, width = self.denoiser.config.pooled_projection_dim, self.denoiser.config.joint_attention_dim
        if pooled > width:  # pack_text puts the pooled embedding in a row of the token embeddings
            raise ValueError(f"the pooled text embedding ({pooled} wide) is wider than the token embeddings ({width})")

    def init_noise_sigma(self) -> float:
        """The path starts from unit Gaussian noise at sigma = 1 (the pipelines do not scale it)."""
        return 1.0

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, 3, H, W) in [0, 1], undoing the VAE's scale and shift as the pipelines do."""
        vae = self.pipeline.vae
        images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor).sample
        images = images.to(torch.promote_types(images.dtype, torch.float32))
        return (images / 2 + 0.5).clamp(0, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> latents, ``decode``'s inverse: (posterior mean - shift) x scale."""
        config = self.pipeline.vae.config
        return (self.posterior_mean(images) - config.shift_factor) * config.scaling_factor

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        return get_peft_model_state_dict(self.denoiser)


# --------------------------------------------------------------------------------------------------
# Two text conditionings in one tensor (SD3, SDXL, FLUX: token embeddings and a pooled embedding)
# --------------------------------------------------------------------------------------------------
def pack_text(prompt_embeds: torch.Tensor, pooled_prompt_embeds: torch.Tensor) -> torch.Tensor:
    """(B, L, D) token embeddings and (B, P) pooled embeddings, P <= D, as one (B, L + 1, D) tensor: the pooled
    embedding, zero-padded to D, is the last row. The buffer stores it once per trajectory, as it stores a UNet's
    one embedding."""
    width, pooled = prompt_embeds.shape[-1], pooled_prompt_embeds.shape[-1]
    row = torch.nn.functional.pad(pooled_prompt_embeds, (0, width - pooled)).to(prompt_embeds.dtype)
    return torch.cat([prompt_embeds, row[:, None]], dim=1)


def unpack_text(packed: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``pack_text``'s inverse: the token embeddings (B, L, D) and the pooled embeddings (B, ``pooled_dim``)."""
    return packed[:, :-1], packed[:, -1, :pooled_dim]
