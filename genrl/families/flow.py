"""The step maths of flow-matching sampling as an MDP (Flow-GRPO, DanceGRPO): an SDE with the flow ODE's marginals.

A rectified-flow model (SD3, FLUX) predicts the velocity v = eps - x0 of the path x_sigma = (1 - sigma) x0 + sigma eps,
which runs from data at sigma = 0 to noise at sigma = 1. diffusers' ``FlowMatchEulerDiscreteScheduler`` samples it
with the deterministic Euler step x_next = x + (sigma_next - sigma) v. That step has no log-prob, so Flow-GRPO turns
the ODE into a reverse-time SDE with the same marginals (it adds noise and corrects the drift by the score), and takes
its Euler-Maruyama step as the policy: a Gaussian over the next latent, like DDPO's DDIM step.

Only the pure step is here; the family (env, policy, registry entry) is not yet.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from genrl.steps import StepDistribution, per_sample

SCHEDULER = FlowMatchEulerDiscreteScheduler
"""The scheduler whose step ``flow_step`` mirrors with ``noise_level=0``."""

NoiseMode = Literal["flow_grpo", "constant"]
"""How the SDE's noise scale g depends on sigma: Flow-GRPO's a sqrt(sigma / (1 - sigma)), or DanceGRPO's constant a."""

FLOW_GRPO_NOISE_LEVEL = 0.7
"""Flow-GRPO's default a (``config.sample.noise_level`` in its config/base.py)."""
DANCE_GRPO_NOISE_LEVEL = 0.3
"""DanceGRPO's default a (its ``--eta``, for FLUX and Wan)."""


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------
def flow_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    noise_level: float = FLOW_GRPO_NOISE_LEVEL,
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
    the excess fades only slowly on the way to the data (tests/test_flow_steps.py).

    ``sigma``, ``sigma_next``: (B,) (or 0-d), in [0, 1] with ``sigma`` > 0; ``noise_level``: a >= 0. The maths run in
    fp32 whatever the model's dtype, as Flow-GRPO's do: bf16 would round away the small corrections to factors of 1.
    ``pred_original`` is x0_hat, in fp32. The log-prob of a next latent is ``genrl.steps.gaussian_log_prob`` of the
    returned mean and std, and ``StepDistribution.sample(noise)`` draws one from given noise.
    """
    if noise_mode not in ("flow_grpo", "constant"):
        raise ValueError(f"noise_mode must be 'flow_grpo' or 'constant', got {noise_mode!r}")
    model_output = model_output.float()
    sample = sample.float()
    sigma = per_sample(sigma.float(), sample)
    sigma_next = per_sample(sigma_next.float(), sample)
    dt = sigma_next - sigma

    if noise_mode == "flow_grpo":
        # g^2 = a^2 sigma / (1 - sigma) is infinite at sigma = 1. Flow-GRPO divides there by 1 - sigmas[1] instead:
        # sigmas[1] is sigma_next of the one step that starts at sigma = 1 (the first, on a schedule from pure noise).
        std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_next, sigma))) * noise_level
    else:
        std_dev_t = torch.full_like(sigma, noise_level)

    # Flow-GRPO's operation order, so that a = 0 leaves x + v dt bit for bit (the factors are then exactly 1).
    mean = (
        sample * (1 + std_dev_t**2 / (2 * sigma) * dt)
        + model_output * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    )
    std = std_dev_t * torch.sqrt(-1 * dt)
    pred_original = sample - sigma * model_output
    return StepDistribution(mean=mean, std=std, pred_original=pred_original)
