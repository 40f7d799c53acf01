"""LCM multistep sampling (``--sampler lcm``): consistency sampling as an MDP (RLCM, paper section 4).

State: the latent at tau_t. Action: the next latent, drawn from N(sqrt(abar_t') f_theta(x_t, t), (1 - abar_t') I).
The reward sees the decoded f_theta of the last step.

Final-step semantics: by default diffusers' (``LCMScheduler.step`` adds no noise on the last step, so H steps give
H - 1 stochastic transitions). With ``noise_last_step`` the last step is noised too, towards its own timestep, as in
the reference RLCM code; the reward still sees the un-noised f of that step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import LCMScheduler

from genrl.samplers.base import Sampler, Schedule, scheduler_timesteps
from genrl.steps import StepDistribution, per_sample


@dataclass
class LCMSettings:
    noise_last_step: bool = False
    """Noise the last step too, as the reference RLCM code does (default: diffusers' noiseless last step)."""


def lcm_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    next_timestep: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    stochastic: torch.Tensor,
    timestep_scaling: float = 10.0,
    sigma_data: float = 0.5,
) -> StepDistribution:
    """One consistency multistep sampling step from x_t to x_t' (epsilon prediction), as ``LCMScheduler.step``.

        x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        f      = c_out(t) x0_hat + c_skip(t) x_t             (the consistency function)
        x_t'   ~ N(sqrt(abar_t') f, (1 - abar_t') I)          where ``stochastic``
        x_t'   = f                                            otherwise (diffusers' last step)

    ``timestep``, ``next_timestep``: (B,) long; ``stochastic``: (B,) bool. The returned ``pred_original``
    is f, the image the reward sees.
    """
    alpha_t = per_sample(alphas_cumprod[timestep], sample)
    alpha_next = per_sample(alphas_cumprod[next_timestep], sample)
    beta_t = 1 - alpha_t
    beta_next = 1 - alpha_next

    scaled_t = per_sample(timestep * timestep_scaling, sample)
    c_skip = sigma_data**2 / (scaled_t**2 + sigma_data**2)
    c_out = scaled_t / (scaled_t**2 + sigma_data**2) ** 0.5

    pred_original = (sample - beta_t.sqrt() * model_output) / alpha_t.sqrt()
    denoised = c_out * pred_original + c_skip * sample

    noisy = per_sample(stochastic, sample)
    mean = torch.where(noisy, alpha_next.sqrt() * denoised, denoised)
    std = torch.where(noisy, beta_next.sqrt(), torch.zeros_like(beta_next))
    return StepDistribution(mean=mean, std=std, pred_original=denoised)


class LCMSampler(Sampler):
    name = "lcm"
    Settings = LCMSettings
    model_kind = "consistency"
    scheduler_class = LCMScheduler
    decodes = "pred_original"
    default_steps = 4  # the shapes-rlcm presets' horizon

    def __init__(self, settings: LCMSettings, scheduler: Any):
        super().__init__(settings, scheduler)
        self.timestep_scaling = float(scheduler.config.get("timestep_scaling", 10.0))
        self.original_steps = LCMScheduler.from_config(scheduler.config).config.original_inference_steps

    @classmethod
    def validate(cls, settings: LCMSettings, num_steps: int) -> None:
        if num_steps > 50:  # LCMs distil a 50-point grid (original_inference_steps); schedule checks the model's own
            raise ValueError(f"{num_steps} steps are too many for the LCM schedule; use 1 to 50")
        if num_steps == 1 and not settings.noise_last_step:
            raise ValueError(
                "1 LCM step leaves no stochastic step with diffusers' deterministic last step; use 2 steps or more, "
                "or --noise-last-step"
            )

    def schedule(self, num_steps: int, adapter: Any, latent_size: int) -> Schedule:
        # Checked here: diffusers' own error for these talks about img2img strength.
        if not 1 <= num_steps <= self.original_steps:
            raise ValueError(
                f"LCM horizon must be between 1 and {self.original_steps} (the scheduler's original_inference_steps, "
                f"the grid it skips along), got {num_steps}"
            )
        # Points of the origin grid (19, 39, ..., 999 for 50 steps of 1000) evenly spaced from the noisy end. Older
        # diffusers, which the RLCM reference code used, took every (50 // H)-th point: the same for H dividing 50.
        timesteps = scheduler_timesteps(
            LCMScheduler, self.scheduler_config, num_steps, original_inference_steps=self.original_steps
        )
        # On the last step, diffusers (and the reference code) take the next timestep to be the current one.
        next_timesteps = timesteps[1:] + timesteps[-1:]
        stochastic = [True] * (num_steps - 1) + [self.settings.noise_last_step]
        return Schedule(timesteps, next_timesteps, stochastic)

    def step(self, prediction: torch.Tensor, obs: dict[str, torch.Tensor], prediction_type: str) -> StepDistribution:
        return lcm_step(
            prediction,
            obs["latents"],
            obs["timestep"],
            obs["next_timestep"],
            self.alphas_cumprod,
            obs["stochastic"],
            timestep_scaling=self.timestep_scaling,
        )

    @classmethod
    def default_grad_steps(cls, num_steps: int) -> int:
        # An LCM step is a short jump that every step shares: DPG can keep the graphs of all of them.
        return num_steps

    @classmethod
    def evaluation_steps(cls, num_steps: int, quick: bool) -> list[int]:
        """The LCM's few steps (quick: its training horizon)."""
        return [num_steps] if quick else sorted({2, 4, 8, num_steps})
