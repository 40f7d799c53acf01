"""Coefficients-preserving sampling (``--sampler cps``, arXiv 2509.05952): a flow sampler whose noise keeps the
coefficients of the path x_sigma = (1 - sigma) x0 + sigma eps exact at every step (in flow_grpo, Flow-Factory and
verl-omni as "cps").

From x at sigma to sigma_next, with the model's x0_hat = x - sigma v and eps_hat = x + (1 - sigma) v:

    std     = sigma_next sin(eta pi / 2)
    mean    = (1 - sigma_next) x0_hat + sqrt(sigma_next^2 - std^2) eps_hat
    x_next  ~ N(mean, std^2 I)

so x_next has x0_hat's coefficient 1 - sigma_next and a noise of total scale sigma_next, whatever eta: the SDE's
over-dispersion near sigma = 1 (``genrl.samplers.flow_sde``) cannot happen. eta = 0 is the Euler step (DDIM on the
flow path); the last step, to sigma_next = 0, has std 0 and is deterministic.

The log-prob is the true Gaussian one (``genrl.steps.gaussian_log_prob``). flow_grpo and Flow-Factory score CPS steps
by -(x_next - mean)^2 alone, without the 1 / (2 std^2) and log std terms; the sampling is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from genrl.samplers.base import Sampler, Schedule, horizon_and_paper, window
from genrl.samplers.flow_sde import PAPER_STEPS, flow_schedule
from genrl.steps import StepDistribution, per_sample


@dataclass
class CPSSettings:
    noise_level: float = 0.7
    """eta in (0, 1]: the share, as an angle, of the next sigma that is fresh noise (std = sigma_next sin(eta pi/2));
    1 replaces all of the noise at every step."""
    sde_window: tuple[int, int] | None = None
    """Steps START to END - 1 (counted from 0, the noisiest) draw noise and are trained; the others take the
    deterministic eta = 0 step. Default: every step."""


def cps_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    noise_level: float | torch.Tensor,
) -> StepDistribution:
    """One CPS step (the module docstring) from the model's velocity ``model_output``, in fp32."""
    model_output = model_output.float()
    sample = sample.float()
    sigma = per_sample(sigma.float(), sample)
    sigma_next = per_sample(sigma_next.float(), sample)
    if isinstance(noise_level, torch.Tensor):
        noise_level = per_sample(noise_level.float(), sample)
    std = sigma_next * torch.sin(noise_level * torch.pi / 2 * torch.ones_like(sigma_next))
    pred_original = sample - sigma * model_output
    noise_estimate = sample + model_output * (1 - sigma)
    mean = pred_original * (1 - sigma_next) + noise_estimate * torch.sqrt(sigma_next**2 - std**2)
    return StepDistribution(mean=mean, std=std, pred_original=pred_original)


class CPSSampler(Sampler):
    name = "cps"
    Settings = CPSSettings
    model_kind = "flow"
    scheduler_class = FlowMatchEulerDiscreteScheduler
    timestep_dtype = torch.float32
    default_steps = 10

    @classmethod
    def validate(cls, settings: CPSSettings, num_steps: int) -> None:
        window(settings.sde_window, num_steps)
        if not 0 < settings.noise_level <= 1:
            raise ValueError(
                f"--noise-level {settings.noise_level} must be in (0, 1]: 0 is the deterministic step, with no "
                "policy to train, and past 1 the angle eta pi / 2 turns back"
            )

    def schedule(self, num_steps: int, adapter: Any, latent_size: int) -> Schedule:
        schedule = flow_schedule(self.scheduler_config, num_steps, adapter, latent_size, self.settings.sde_window)
        # The step to sigma = 0 has std 0 (sigma_next sin(...)): deterministic, with no log-prob to train.
        stochastic = [s and nxt > 0 for s, nxt in zip(schedule.stochastic, schedule.next_timesteps, strict=True)]
        if not any(stochastic):
            raise ValueError(f"{num_steps} CPS step(s) leave no stochastic step (the last one is deterministic)")
        return Schedule(schedule.timesteps, schedule.next_timesteps, stochastic)

    def step(self, prediction: torch.Tensor, obs: dict[str, torch.Tensor], prediction_type: str) -> StepDistribution:
        noise_level = torch.where(obs["stochastic"], self.settings.noise_level, 0.0)
        return cps_step(prediction, obs["latents"], obs["timestep"], obs["next_timestep"], noise_level)

    @classmethod
    def evaluation_steps(cls, num_steps: int, quick: bool) -> list[int]:
        return horizon_and_paper(num_steps, quick, PAPER_STEPS)
