"""What every sampler's step shares: the Gaussian over the next latent that a step defines, and its log-prob and KL.

Each sampler's own step maths (``genrl.samplers.lcm.lcm_step``, ``genrl.samplers.ddim.ddim_step``, ...) are pure
functions that return a ``StepDistribution``: every schedule quantity comes in as an argument, and each mirrors the
operation order of the diffusers scheduler it stands for, so that given the same noise the results agree bit for
bit (tests/samplers/test_lcm_and_ddim.py).
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


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather-by-timestep results have shape (B,); broadcast them over the latent dims."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


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
