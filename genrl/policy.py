"""The policy: a model adapter paired with a sampler, and the Gaussian they define over the next latent.

``distribution(obs)`` gives mean and std of the next latent: the adapter's guided prediction (``genrl.adapters``),
stepped by the sampler's maths (``genrl.samplers``). ``action_log_prob(dist, next_latents)`` scores an action under
it; ``act(obs, generator)`` samples one. ``make_policy(env, ...)`` pairs the env's adapter and sampler.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from peft import LoraConfig

from genrl.adapters.base import ModelAdapter
from genrl.noise import NoiseSlice, noise_rows
from genrl.samplers.base import Sampler
from genrl.steps import KLForm, LogProbReduction, StepDistribution, gaussian_kl, gaussian_log_prob, step_dt


def add_lora(net: torch.nn.Module, rank: int, alpha: float, target_modules: Sequence[str]) -> None:
    """Freeze the denoiser ``net`` (a UNet or a transformer) and attach a trainable LoRA adapter (zero-initialised B,
    so the policy starts unchanged)."""
    net.requires_grad_(False)
    net.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(target_modules))
    )


class DenoisingPolicy(torch.nn.Module):
    def __init__(self, adapter: ModelAdapter, sampler: Sampler, guidance_scale: float, reduction: LogProbReduction):
        super().__init__()
        self.adapter = adapter
        self.denoiser = adapter.denoiser  # a submodule: the trainable weights, and what the reference switches off
        self.sampler = sampler.to(adapter.denoiser.device)
        self.guidance_scale = guidance_scale
        self.reduction: LogProbReduction = reduction

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """``--mixed-precision``'s half dtype, which the adapter runs the denoiser in (None: the weights' own)."""
        return self.adapter.autocast_dtype

    @autocast_dtype.setter
    def autocast_dtype(self, dtype: torch.dtype | None) -> None:
        self.adapter.autocast_dtype = dtype

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    def distribution(self, obs: dict[str, torch.Tensor]) -> StepDistribution:
        """The step's Gaussian at ``obs``: the adapter's prediction, guidance applied, stepped by the sampler."""
        prediction = self.adapter.guided(
            obs["latents"],
            obs["timestep"],
            obs["prompt_embeds"],
            obs.get("negative_prompt_embeds"),
            self.guidance_scale,
        )
        return self.sampler.step(prediction, obs, self.adapter.prediction_type)

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
        with self.reference():
            return self.distribution(obs)

    @contextmanager
    def reference(self) -> Iterator[None]:
        """The frozen model inside the block (the LoRA switched off, no gradient), the policy again after it."""
        if not getattr(self.denoiser, "peft_config", None):
            raise RuntimeError("the reference policy needs a LoRA adapter to switch off")
        self.denoiser.disable_adapters()
        try:
            with torch.no_grad():
                yield
        finally:
            self.denoiser.enable_adapters()

    def kl_to_reference(
        self, obs: dict[str, torch.Tensor], dist: StepDistribution, form: KLForm = "closed"
    ) -> torch.Tensor:
        """The KL of each step (B,) to the reference. closed: KL(pi_theta || pi_ref) in closed form, reduced over
        latent dims like the log-prob. flow_grpo (the flow_sde sampler's steps): Flow-GRPO's term, mean over the
        latent of (mean - mean_ref)^2 / (2 std_dev_t^2) (scripts/train_sd3.py), where its std_dev_t is the SDE's g
        and the step's std is g sqrt(|dt|): the closed form's mean over the latent times |dt| = sigma - sigma_next."""
        ref = self.reference_distribution(obs)
        if form == "flow_grpo":
            return gaussian_kl(dist.mean, dist.std, ref.mean, ref.std, "mean") * step_dt(obs)
        return gaussian_kl(dist.mean, dist.std, ref.mean, ref.std, self.reduction)


def make_policy(env: Any, guidance_scale: float, reduction: LogProbReduction = "mean") -> DenoisingPolicy:
    """The policy of ``env``'s adapter and sampler (a ``genrl.envs.DenoisingEnv``)."""
    return DenoisingPolicy(env.adapter, env.sampler, guidance_scale, reduction)
