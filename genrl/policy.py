"""The policy: the trainable denoiser and the Gaussian it defines over the next latent.

``distribution(obs)`` gives mean and std of the next latent; ``action_log_prob(dist, next_latents)`` scores an
action under it; ``act(obs, generator)`` samples one. Each family (``genrl.families``) subclasses it with its
denoiser's call (a UNet, or a flow model's transformer: ``genrl.denoiser``) and its step maths; ``make_policy``
builds the one ``--env`` names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from peft import LoraConfig

from genrl.families import family
from genrl.noise import NoiseSlice, noise_rows
from genrl.precision import autocast
from genrl.steps import LogProbReduction, StepDistribution, gaussian_kl, gaussian_log_prob


def add_lora(net: torch.nn.Module, rank: int, alpha: float, target_modules: Sequence[str]) -> None:
    """Freeze the denoiser ``net`` (a UNet or a transformer) and attach a trainable LoRA adapter (zero-initialised B,
    so the policy starts unchanged)."""
    net.requires_grad_(False)
    net.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(target_modules))
    )


class DenoisingPolicy(torch.nn.Module):
    autocast_dtype: torch.dtype | None = None
    """``--mixed-precision``'s half dtype, which ``denoise`` runs the denoiser in (None: the weights' own)."""

    def __init__(self, denoiser: torch.nn.Module, scheduler: Any, guidance_scale: float, reduction: LogProbReduction):
        super().__init__()
        self.denoiser = denoiser
        self.guidance_scale = guidance_scale
        self.reduction: LogProbReduction = reduction
        # A diffusion scheduler's noise schedule, which the LCM and DDIM steps index; a flow scheduler has none.
        alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
        if alphas_cumprod is not None:
            self.register_buffer("alphas_cumprod", alphas_cumprod.to(denoiser.device), persistent=False)

    def denoise(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The denoiser's prediction, at least fp32: under autocast where mixed precision is on, cast up after it, so
        that every family's step maths (mean, std, log-prob) run in fp32 (``genrl.precision``)."""
        with autocast(self.denoiser.device.type, self.autocast_dtype):
            prediction = self.denoiser(*args, **kwargs).sample
        return prediction.to(torch.promote_types(prediction.dtype, torch.float32))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def distribution(self, obs: dict[str, torch.Tensor]) -> StepDistribution:
        raise NotImplementedError

    def action_log_prob(self, dist: StepDistribution, next_latents: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(next_latents, dist.mean, dist.std, self.reduction)

    def sample_action(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator, noise_slice: NoiseSlice | None = None
    ) -> tuple[dict[str, torch.Tensor], StepDistribution]:
        """Reparameterised: the action is mean + std * noise, differentiable in the weights where grad is on.
        With ``noise_slice``, the noise is this batch's rows of the noise of the global batch."""
        dist = self.distribution(obs)
        noise = noise_rows(dist.mean.shape[0], tuple(dist.mean.shape[1:]), generator, noise_slice)
        return {"next_latents": dist.sample(noise.to(dist.mean)), "pred_original": dist.pred_original}, dist

    @torch.no_grad()
    def act(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator, noise_slice: NoiseSlice | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Sample the next latent. Returns the action and its log-prob (meaningless where not ``stochastic``)."""
        action, dist = self.sample_action(obs, generator, noise_slice)
        log_prob = gaussian_log_prob(action["next_latents"], dist.mean, dist.std.clamp(min=1e-12), self.reduction)
        return action, log_prob

    @torch.no_grad()
    def reference_distribution(self, obs: dict[str, torch.Tensor]) -> StepDistribution:
        """The frozen model's step: the same denoiser with the LoRA adapter switched off, no second copy."""
        if not getattr(self.denoiser, "peft_config", None):
            raise RuntimeError("the reference policy needs a LoRA adapter to switch off")
        self.denoiser.disable_adapters()
        try:
            return self.distribution(obs)
        finally:
            self.denoiser.enable_adapters()

    def kl_to_reference(self, obs: dict[str, torch.Tensor], dist: StepDistribution) -> torch.Tensor:
        """Closed-form KL(pi_theta || pi_ref) of each step (B,), reduced over latent dims like the log-prob."""
        ref = self.reference_distribution(obs)
        return gaussian_kl(dist.mean, dist.std, ref.mean, ref.std, self.reduction)


def make_policy(
    kind: str,
    pipeline: Any,
    guidance_scale: float,
    reduction: LogProbReduction,
    eta: float = 1.0,
    **options: Any,
) -> DenoisingPolicy:
    """The policy of family ``kind`` (``genrl.families``) on ``pipeline``'s denoiser; ``eta`` is DDIM's, ``options``
    the family's own (``policy_options``: the flow family's noise level and mode)."""
    return family(kind).make_policy(pipeline, guidance_scale, reduction, eta, **options)
