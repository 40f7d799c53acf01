"""The maths of one denoising step, as a Gaussian policy over the next latent.

Pure functions: every schedule quantity comes in as an argument, nothing counts steps behind your back.
Each function mirrors the operation order of the diffusers scheduler it stands for (``LCMScheduler.step``,
``DDIMScheduler.step``), so that given the same noise the results agree bit for bit (tests/test_steps.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

LogProbReduction = Literal["mean", "sum"]


@dataclass
class StepDistribution:
    """N(mean, std^2 I) over the next latent; ``pred_original`` is the model's x0 estimate at this step."""

    mean: torch.Tensor
    std: torch.Tensor  # broadcastable to mean; 0 where the step is deterministic
    pred_original: torch.Tensor

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * noise


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather-by-timestep results have shape (B,); broadcast them over the latent dims."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


# --------------------------------------------------------------------------------------------------
# The LCM step (RLCM, paper section 4)
# --------------------------------------------------------------------------------------------------
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
    """One consistency multistep sampling step from x_t to x_t' (epsilon prediction).

        x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        f      = c_out(t) x0_hat + c_skip(t) x_t             (the consistency function)
        x_t'   ~ N(sqrt(abar_t') f, (1 - abar_t') I)          where ``stochastic``
        x_t'   = f                                            otherwise (diffusers' last step)

    ``timestep``, ``next_timestep``: (B,) long; ``stochastic``: (B,) bool. The returned ``pred_original``
    is f, the image the reward sees.
    """
    alpha_t = _per_sample(alphas_cumprod[timestep], sample)
    alpha_next = _per_sample(alphas_cumprod[next_timestep], sample)
    beta_t = 1 - alpha_t
    beta_next = 1 - alpha_next

    scaled_t = _per_sample(timestep * timestep_scaling, sample)
    c_skip = sigma_data**2 / (scaled_t**2 + sigma_data**2)
    c_out = scaled_t / (scaled_t**2 + sigma_data**2) ** 0.5

    pred_original = (sample - beta_t.sqrt() * model_output) / alpha_t.sqrt()
    denoised = c_out * pred_original + c_skip * sample

    noisy = _per_sample(stochastic, sample)
    mean = torch.where(noisy, alpha_next.sqrt() * denoised, denoised)
    std = torch.where(noisy, beta_next.sqrt(), torch.zeros_like(beta_next))
    return StepDistribution(mean=mean, std=std, pred_original=denoised)


# --------------------------------------------------------------------------------------------------
# The DDIM step with eta > 0 (DDPO)
# --------------------------------------------------------------------------------------------------
def ddim_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    prev_timestep: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    final_alpha_cumprod: torch.Tensor,
    eta: float,
) -> StepDistribution:
    """One DDIM step from x_t to x_prev (epsilon prediction), eq. (12) of the DDIM paper.

        sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
        mean    = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_t^2) eps
        x_prev  ~ N(mean, sigma_t^2 I)

    ``prev_timestep`` < 0 means the final step, which lands on ``final_alpha_cumprod`` (as ``DDIMScheduler.step``
    does). Where that is 1 (``set_alpha_to_one=True``) the step is deterministic, std 0, and has no log-prob;
    ``DDPMEnv`` therefore steps to timestep 0 instead, as ddpo-pytorch does, and never passes a negative one for a
    step it trains.
    """
    alpha_t = _per_sample(alphas_cumprod[timestep], sample)
    safe_prev = prev_timestep.clamp(min=0)
    alpha_prev = torch.where(prev_timestep >= 0, alphas_cumprod[safe_prev], final_alpha_cumprod.to(alphas_cumprod))
    alpha_prev = _per_sample(alpha_prev, sample)
    beta_t = 1 - alpha_t
    beta_prev = 1 - alpha_prev

    pred_original = (sample - beta_t ** (0.5) * model_output) / alpha_t ** (0.5)
    variance = (beta_prev / beta_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance ** (0.5)
    direction = (1 - alpha_prev - std**2) ** (0.5) * model_output
    mean = alpha_prev ** (0.5) * pred_original + direction
    return StepDistribution(mean=mean, std=std, pred_original=pred_original)


# --------------------------------------------------------------------------------------------------
# Log-probability of an action under the step's Gaussian
# --------------------------------------------------------------------------------------------------
def gaussian_log_prob(
    value: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, reduction: LogProbReduction = "mean"
) -> torch.Tensor:
    """log N(value; mean, std^2 I), reduced over every dim but the batch: "mean" as DDPO and RLCM do, or "sum".

    The mean reduction divides the true log-density by the number of latent dims; it is why the reference
    clip range is as small as 1e-4.
    """
    std = std.expand_as(mean)
    elementwise = -((value.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    dims = tuple(range(1, elementwise.ndim))
    return elementwise.mean(dim=dims) if reduction == "mean" else elementwise.sum(dim=dims)


def gaussian_kl(
    mean_p: torch.Tensor,
    std_p: torch.Tensor,
    mean_q: torch.Tensor,
    std_q: torch.Tensor,
    reduction: LogProbReduction = "mean",
) -> torch.Tensor:
    """KL(N(mean_p, std_p^2 I) || N(mean_q, std_q^2 I)), reduced over every dim but the batch like the log-prob.

        KL = log(std_q / std_p) + (std_p^2 + (mean_p - mean_q)^2) / (2 std_q^2) - 1/2      per dim

    Two step policies at the same state share the schedule's std, so it is (mean_p - mean_q)^2 / (2 std^2).
    """
    std_p, std_q = std_p.expand_as(mean_p), std_q.expand_as(mean_q)
    elementwise = torch.log(std_q / std_p) + (std_p**2 + (mean_p - mean_q) ** 2) / (2 * std_q**2) - 0.5
    dims = tuple(range(1, elementwise.ndim))
    return elementwise.mean(dim=dims) if reduction == "mean" else elementwise.sum(dim=dims)
