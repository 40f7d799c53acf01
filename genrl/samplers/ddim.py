"""DDIM with eta > 0 (``--sampler ddim``): diffusion sampling as an MDP (DDPO).

State: the latent at t. Action: x_prev ~ N(mean_t, sigma_t^2 I). Every step is stochastic by default, the last one
too (it steps to timestep 0, as in ddpo-pytorch; see ``DDIMSampler.schedule``); ``sde_window`` keeps the noise, and
the training, to a window of steps, the others taking DDIM's deterministic eta = 0 step. The reward sees the decoded
last latent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDIMScheduler

from genrl.samplers.base import Sampler, Schedule, horizon_and_paper, scheduler_timesteps, window
from genrl.steps import StepDistribution, per_sample


@dataclass
class DDIMSettings:
    eta: float = 1.0
    """DDIM's eta: the share of the DDPM posterior's noise each step draws (> 0: a policy to train)."""
    sde_window: tuple[int, int] | None = None
    """Steps START to END - 1 (counted from 0, the noisiest) draw noise and are trained; the others take DDIM's
    deterministic eta = 0 step. Default: every step."""


PAPER_STEPS = 50
"""DDPO samples with 50 DDIM steps."""


def ddim_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    prev_timestep: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    final_alpha_cumprod: torch.Tensor,
    eta: float | torch.Tensor,
    prediction_type: str = "epsilon",
) -> StepDistribution:
    """One DDIM step from x_t to x_prev, eq. (12) of the DDIM paper, as ``DDIMScheduler.step``.

        x0_hat, eps_hat from the model output: epsilon, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0
        sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
        mean    = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_t^2) eps_hat
        x_prev  ~ N(mean, sigma_t^2 I)

    ``prev_timestep`` < 0 means the final step, which lands on ``final_alpha_cumprod`` (as ``DDIMScheduler.step``
    does). Where that is 1 (``set_alpha_to_one=True``) the step is deterministic, std 0, and has no log-prob;
    ``DDIMSampler.schedule`` therefore steps to timestep 0 instead, as ddpo-pytorch does, and never passes a negative
    one for a step it trains. ``eta``: one for all, or (B,).
    """
    alpha_t = per_sample(alphas_cumprod[timestep], sample)
    safe_prev = prev_timestep.clamp(min=0)
    alpha_prev = torch.where(prev_timestep >= 0, alphas_cumprod[safe_prev], final_alpha_cumprod.to(alphas_cumprod))
    alpha_prev = per_sample(alpha_prev, sample)
    beta_t = 1 - alpha_t
    beta_prev = 1 - alpha_prev
    if isinstance(eta, torch.Tensor):
        eta = per_sample(eta, sample)

    if prediction_type == "epsilon":
        pred_original = (sample - beta_t ** (0.5) * model_output) / alpha_t ** (0.5)
        pred_epsilon = model_output
    elif prediction_type == "v_prediction":
        pred_original = (alpha_t**0.5) * sample - (beta_t**0.5) * model_output
        pred_epsilon = (alpha_t**0.5) * model_output + (beta_t**0.5) * sample
    else:
        raise ValueError(f"DDIM takes an epsilon or v prediction, got {prediction_type!r}")
    variance = (beta_prev / beta_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance ** (0.5)
    direction = (1 - alpha_prev - std**2) ** (0.5) * pred_epsilon
    mean = alpha_prev ** (0.5) * pred_original + direction
    return StepDistribution(mean=mean, std=std, pred_original=pred_original)


class DDIMSampler(Sampler):
    name = "ddim"
    Settings = DDIMSettings
    model_kind = "diffusion"
    scheduler_class = DDIMScheduler
    default_steps = 20  # the shapes-ddpo presets' horizon

    def __init__(self, settings: DDIMSettings, scheduler: Any):
        super().__init__(settings, scheduler)
        final = DDIMScheduler.from_config(scheduler.config).final_alpha_cumprod
        self.register_buffer("final_alpha_cumprod", torch.as_tensor(final), persistent=False)

    @classmethod
    def validate(cls, settings: DDIMSettings, num_steps: int) -> None:
        if not settings.eta > 0:
            raise ValueError(f"--eta {settings.eta} makes DDIM deterministic, with no policy to train; use > 0")
        window(settings.sde_window, num_steps)

    def schedule(self, num_steps: int, adapter: Any, latent_size: int) -> Schedule:
        num_train_timesteps = self.scheduler_config.num_train_timesteps
        if not 1 <= num_steps <= num_train_timesteps:
            raise ValueError(f"DDIM steps must be between 1 and {num_train_timesteps}, got {num_steps}")
        start, end = window(self.settings.sde_window, num_steps)
        # The scheduler's own schedule, with its timestep_spacing and steps_offset (SD 1.5: "leading", 1).
        timesteps = scheduler_timesteps(DDIMScheduler, self.scheduler_config, num_steps)
        # Each step goes back by T // num_steps, as DDIMScheduler.step computes its previous timestep.
        ratio = num_train_timesteps // num_steps
        # The last step, as ddpo-pytorch takes it (diffusers_patch/ddim_with_logprob.py clamps the previous timestep
        # to [0, num_train_timesteps - 1]): it lands on alphas_cumprod[0] and keeps a positive std. diffusers' own
        # step lands on final_alpha_cumprod instead, which is 1 where the scheduler sets set_alpha_to_one (its
        # default where a config omits the key): std 0, and a step trained as stochastic would get a NaN log-prob.
        # A schedule that ends on t = 0 (steps_offset 0, or "linspace" spacing) has no earlier timestep to step to:
        # that step keeps diffusers' final alpha (next timestep -1, "past 0") and is deterministic, outside the
        # policy, like LCM's last step.
        next_timesteps = [max(t - ratio, 0) if t > 0 else -1 for t in timesteps]
        stochastic = [t > 0 and start <= i < end for i, t in enumerate(timesteps)]
        if not any(stochastic):
            raise ValueError(
                f"{num_steps} DDIM step(s) from t = 0 (where the scheduler's schedule ends) leave no stochastic step "
                'to train; use more steps or a scheduler with steps_offset 1 and "leading" spacing'
            )
        return Schedule(timesteps, next_timesteps, stochastic)

    def step(self, prediction: torch.Tensor, obs: dict[str, torch.Tensor], prediction_type: str) -> StepDistribution:
        # Outside the window a step is DDIM's deterministic one: eta 0.
        eta = torch.where(obs["stochastic"], self.settings.eta, 0.0) if self.settings.sde_window else self.settings.eta
        return ddim_step(
            prediction,
            obs["latents"],
            obs["timestep"],
            obs["next_timestep"],
            self.alphas_cumprod,
            self.final_alpha_cumprod,
            eta,
            prediction_type,
        )

    @classmethod
    def evaluation_steps(cls, num_steps: int, quick: bool) -> list[int]:
        return horizon_and_paper(num_steps, quick, PAPER_STEPS)
