"""The policy: the trainable denoiser and the Gaussian it defines over the next latent.

``distribution(obs)`` gives mean and std of the next latent; ``action_log_prob(dist, next_latents)`` scores an
action under it; ``act(obs, generator)`` samples one. The step maths themselves live in ``genrl.steps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from peft import LoraConfig

from genrl.noise import NoiseSlice, noise_rows
from genrl.steps import (
    LogProbReduction,
    StepDistribution,
    ddim_step,
    gaussian_kl,
    gaussian_log_prob,
    lcm_step,
)


def add_lora(unet: torch.nn.Module, rank: int, alpha: float, target_modules: Sequence[str]) -> None:
    """Freeze the UNet and attach a trainable LoRA adapter (zero-initialised B, so the policy starts unchanged)."""
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(target_modules))
    )


class DenoisingPolicy(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module, scheduler: Any, guidance_scale: float, reduction: LogProbReduction):
        super().__init__()
        self.unet = unet
        self.guidance_scale = guidance_scale
        self.reduction: LogProbReduction = reduction
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.to(unet.device), persistent=False)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

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
        """The frozen model's step: the same UNet with the LoRA adapter switched off, no second copy."""
        if not getattr(self.unet, "peft_config", None):
            raise RuntimeError("the reference policy needs a LoRA adapter to switch off")
        self.unet.disable_adapters()
        try:
            return self.distribution(obs)
        finally:
            self.unet.enable_adapters()

    def kl_to_reference(self, obs: dict[str, torch.Tensor], dist: StepDistribution) -> torch.Tensor:
        """Closed-form KL(pi_theta || pi_ref) of each step (B,), reduced over latent dims like the log-prob."""
        ref = self.reference_distribution(obs)
        return gaussian_kl(dist.mean, dist.std, ref.mean, ref.std, self.reduction)


class LCMPolicy(DenoisingPolicy):
    """Guidance enters as the w-embedding (``timestep_cond``), w = guidance_scale - 1: one UNet pass per step.
    ``w_embedding`` (1, time_cond_proj_dim) is that embedding, as the LCM pipeline computes it (``make_policy``)."""

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler: Any,
        guidance_scale: float,
        reduction: LogProbReduction,
        w_embedding: torch.Tensor,
    ):
        super().__init__(unet, scheduler, guidance_scale, reduction)
        self.timestep_scaling = float(scheduler.config.get("timestep_scaling", 10.0))
        self.register_buffer("w_embedding", w_embedding.to(unet.device), persistent=False)

    def distribution(self, obs: dict[str, torch.Tensor]) -> StepDistribution:
        latents = obs["latents"]
        cond = self.w_embedding.to(latents).repeat(latents.shape[0], 1)
        eps = self.unet(latents, obs["timestep"], obs["prompt_embeds"], timestep_cond=cond).sample
        return lcm_step(
            eps,
            latents,
            obs["timestep"],
            obs["next_timestep"],
            self.alphas_cumprod,
            obs["stochastic"],
            timestep_scaling=self.timestep_scaling,
        )


class DDPMPolicy(DenoisingPolicy):
    """Classifier-free guidance by a doubled batch (unconditional, conditional), then the DDIM step."""

    def __init__(
        self, unet: torch.nn.Module, scheduler: Any, guidance_scale: float, reduction: LogProbReduction, eta: float
    ):
        super().__init__(unet, scheduler, guidance_scale, reduction)
        self.eta = eta
        self.register_buffer("final_alpha_cumprod", scheduler.final_alpha_cumprod.to(unet.device), persistent=False)

    def distribution(self, obs: dict[str, torch.Tensor]) -> StepDistribution:
        latents, t = obs["latents"], obs["timestep"]
        if self.guidance_scale > 1:
            embeds = torch.cat([obs["negative_prompt_embeds"], obs["prompt_embeds"]])
            uncond, cond = self.unet(torch.cat([latents] * 2), torch.cat([t] * 2), embeds).sample.chunk(2)
            eps = uncond + self.guidance_scale * (cond - uncond)
        else:
            eps = self.unet(latents, t, obs["prompt_embeds"]).sample
        return ddim_step(eps, latents, t, obs["next_timestep"], self.alphas_cumprod, self.final_alpha_cumprod, self.eta)


def make_policy(
    kind: Literal["lcm", "ddpm"], pipeline: Any, guidance_scale: float, reduction: LogProbReduction, eta: float = 1.0
) -> DenoisingPolicy:
    if kind == "lcm":
        # The pipeline's own embedding of w = guidance_scale - 1 (computed as its __call__ does, on the CPU).
        w = torch.tensor([guidance_scale - 1.0])
        w_embedding = pipeline.get_guidance_scale_embedding(w, embedding_dim=pipeline.unet.config.time_cond_proj_dim)
        return LCMPolicy(pipeline.unet, pipeline.scheduler, guidance_scale, reduction, w_embedding)
    return DDPMPolicy(pipeline.unet, pipeline.scheduler, guidance_scale, reduction, eta)
