"""Flow matching as an SDE (``--sampler flow_sde``): Flow-GRPO's sampler, and DanceGRPO's with ``noise_mode
constant``.

A rectified-flow model (SD3, FLUX) predicts the velocity v = eps - x0 of the path x_sigma = (1 - sigma) x0 + sigma
eps, which runs from data at sigma = 0 to noise at sigma = 1. diffusers' ``FlowMatchEulerDiscreteScheduler`` samples
it with the deterministic Euler step x_next = x + (sigma_next - sigma) v. That step has no log-prob, so Flow-GRPO
turns the ODE into a reverse-time SDE with the same marginals (it adds noise and corrects the drift by the score),
and takes its Euler-Maruyama step as the policy: a Gaussian over the next latent, like DDPO's DDIM step.

State: the latent at sigma; ``timestep`` and ``next_timestep`` are float32 sigmas in [0, 1], exactly the scheduler's
``sigmas`` (the last step's ``next_timestep`` is the terminal 0). Every step is stochastic, the last one (to sigma =
0) too, as in Flow-GRPO; ``sde_window`` keeps the SDE to a window of steps, the others taking the ODE's Euler step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from genrl.samplers.base import Sampler, Schedule, horizon_and_paper, window
from genrl.steps import StepDistribution, per_sample

NoiseMode = Literal["flow_grpo", "constant"]
"""How the SDE's noise scale g depends on sigma: Flow-GRPO's a sqrt(sigma / (1 - sigma)), or DanceGRPO's constant a."""
NOISE_MODES = ("flow_grpo", "constant")

FLOW_GRPO_NOISE_LEVEL = 0.7
"""Flow-GRPO's default a (``config.sample.noise_level`` in its config/base.py)."""
DANCE_GRPO_NOISE_LEVEL = 0.3
"""DanceGRPO's default a (its ``--eta``, for FLUX and Wan)."""
MAX_NOISE_LEVEL = math.sqrt(2)
"""The noise level a at which ``flow_step``'s mean keeps none of the latent: its factor on x is 1 - a^2/2 on the
step from sigma = 1 ("flow_grpo", where Flow-GRPO divides by 1 - sigma_next) and on the step to sigma = 0
("constant"); past it the factor is negative, and the chain flips and grows step by step."""
PAPER_STEPS = 40
"""Flow-GRPO evaluates with 40 steps (it trains with 10)."""


@dataclass
class FlowSDESettings:
    noise_level: float = FLOW_GRPO_NOISE_LEVEL
    """The SDE's noise level a (0 < a < sqrt(2); Flow-GRPO's 0.7; 0 would be the deterministic Euler step)."""
    noise_mode: NoiseMode = "flow_grpo"
    """The noise scale g = a sqrt(sigma / (1 - sigma)) (Flow-GRPO), or a constant a (DanceGRPO)."""
    sde_window: tuple[int, int] | None = None
    """Steps START to END - 1 (counted from 0, the noisiest) take the SDE and are trained; the others take the ODE's
    deterministic Euler step and cost no training (Flow-GRPO-Fast, MixGRPO). Default: every step."""


def flow_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    noise_level: float | torch.Tensor = FLOW_GRPO_NOISE_LEVEL,
    noise_mode: NoiseMode = "flow_grpo",
) -> StepDistribution:
    """One Euler-Maruyama step of the flow SDE from x at ``sigma`` to x_next at ``sigma_next`` (velocity prediction).

        dt      = sigma_next - sigma                                              (< 0: towards the data)
        g       = a sqrt(sigma / (1 - sigma))  ("flow_grpo")   or   a  ("constant", DanceGRPO)
        mean    = x (1 + g^2 dt / (2 sigma)) + v (1 + g^2 (1 - sigma) / (2 sigma)) dt
        x_next  ~ N(mean, g^2 |dt| I)

    The mean is the Euler step x + v dt plus the score correction -g^2/2 score(x) dt, with the marginal's score
    written through the model's noise estimate: score(x) = -eps_hat / sigma, eps_hat = x + (1 - sigma) v (DanceGRPO
    writes it as -(x - (1 - sigma) x0_hat) / sigma^2, x0_hat = x - sigma v: the same). For any g the SDE has the ODE's
    marginals in continuous time; a = 0 is diffusers' Euler step exactly.

    Euler-Maruyama keeps them to first order in the step, with one exception: Flow-GRPO's g^2 / sigma = a^2 / (1 -
    sigma) diverges at sigma = 1, and on the first few steps of a schedule from pure noise the drift's factor is O(1)
    however fine the grid (a^2 / 2 on the first, a^2 / (2 j) j steps later on an even grid). Those steps
    over-disperse the latent, by about a^4 / 4 of variance on the first (0.06 for a = 0.7, whatever the data), and
    the excess fades only slowly on the way to the data (tests/samplers/test_flow_sde.py).

    ``sigma``, ``sigma_next``: (B,) (or 0-d), in [0, 1] with ``sigma`` > 0; ``noise_level``: a >= 0, one for all or
    (B,), one a sample. The maths run in fp32 whatever the model's dtype, as Flow-GRPO's do: bf16 would round away
    the small corrections to factors of 1. ``pred_original`` is x0_hat, in fp32.
    """
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be 'flow_grpo' or 'constant', got {noise_mode!r}")
    model_output = model_output.float()
    sample = sample.float()
    sigma = per_sample(sigma.float(), sample)
    sigma_next = per_sample(sigma_next.float(), sample)
    if isinstance(noise_level, torch.Tensor):
        noise_level = per_sample(noise_level.float(), sample)
    dt = sigma_next - sigma

    if noise_mode == "flow_grpo":
        # g^2 = a^2 sigma / (1 - sigma) is infinite at sigma = 1. Flow-GRPO divides there by 1 - sigmas[1] instead:
        # sigmas[1] is sigma_next of the one step that starts at sigma = 1 (the first, on a schedule from pure noise).
        std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_next, sigma))) * noise_level
    else:
        std_dev_t = noise_level * torch.ones_like(sigma)

    # Flow-GRPO's operation order, so that a = 0 leaves x + v dt bit for bit (the factors are then exactly 1).
    mean = (
        sample * (1 + std_dev_t**2 / (2 * sigma) * dt)
        + model_output * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    )
    std = std_dev_t * torch.sqrt(-1 * dt)
    pred_original = sample - sigma * model_output
    return StepDistribution(mean=mean, std=std, pred_original=pred_original)


def flow_sigmas(config: Any, num_steps: int, **options: Any) -> list[float]:
    """The ``num_steps`` + 1 sigmas of ``FlowMatchEulerDiscreteScheduler.set_timesteps(num_steps, **options)`` on a
    scheduler ``config``, ending on the terminal 0, as float32 values. ``options`` are the pipeline's own (its
    adapter's ``flow_schedule_options``: SD3's ``mu`` where it shifts by resolution, FLUX's explicit sigmas). Built on
    a fresh scheduler: the pipeline's own stays as it was."""
    fresh = FlowMatchEulerDiscreteScheduler.from_config(config)
    fresh.set_timesteps(num_steps, **options)
    return [float(sigma) for sigma in fresh.sigmas]  # a Python float holds a float32 exactly


def flow_schedule(config: Any, num_steps: int, adapter: Any, latent_size: int, stochastic_window: Any) -> Schedule:
    """The flow samplers' schedule: the pipeline's sigmas, stochastic in the window [start, end)."""
    if num_steps < 1:
        raise ValueError(f"flow steps must be at least 1, got {num_steps}")
    start, end = window(stochastic_window, num_steps)
    sigmas = flow_sigmas(config, num_steps, **adapter.flow_schedule_options(config, num_steps, latent_size))
    stochastic = [start <= i < end for i in range(num_steps)]  # the SDE's steps; the others take the ODE's
    return Schedule(sigmas[:-1], sigmas[1:], stochastic)


class FlowSDESampler(Sampler):
    name = "flow_sde"
    Settings = FlowSDESettings
    model_kind = "flow"
    scheduler_class = FlowMatchEulerDiscreteScheduler
    timestep_dtype = torch.float32
    default_steps = 10  # Flow-GRPO's training horizon

    @classmethod
    def validate(cls, settings: FlowSDESettings, num_steps: int) -> None:
        window(settings.sde_window, num_steps)
        if settings.noise_mode not in NOISE_MODES:
            raise ValueError(f"--noise-mode must be 'flow_grpo' or 'constant', got {settings.noise_mode!r}")
        if not settings.noise_level > 0:
            raise ValueError(
                f"--noise-level {settings.noise_level} makes the flow step the deterministic Euler step, with "
                f"no policy to train; use a noise level > 0 (Flow-GRPO: {FLOW_GRPO_NOISE_LEVEL})"
            )
        if settings.noise_level >= MAX_NOISE_LEVEL:
            raise ValueError(
                f"--noise-level {settings.noise_level} is too large: the flow step's mean keeps 1 - a^2/2 of "
                "the latent on the first step (the last with noise mode constant), none at a = sqrt(2) and its "
                f"negative past it, so the samples run away to NaN; use a noise level under {MAX_NOISE_LEVEL:.2f} "
                f"(Flow-GRPO: {FLOW_GRPO_NOISE_LEVEL})"
            )

    def schedule(self, num_steps: int, adapter: Any, latent_size: int) -> Schedule:
        return flow_schedule(self.scheduler_config, num_steps, adapter, latent_size, self.settings.sde_window)

    def step(self, prediction: torch.Tensor, obs: dict[str, torch.Tensor], prediction_type: str) -> StepDistribution:
        # Outside the SDE window a step is the ODE's: noise level 0, diffusers' Euler step exactly.
        noise_level = torch.where(obs["stochastic"], self.settings.noise_level, 0.0)
        return flow_step(
            prediction, obs["latents"], obs["timestep"], obs["next_timestep"], noise_level, self.settings.noise_mode
        )

    @classmethod
    def evaluation_steps(cls, num_steps: int, quick: bool) -> list[int]:
        return horizon_and_paper(num_steps, quick, PAPER_STEPS)
