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
KLForm = Literal["closed", "flow_grpo"]
"""The KL to the reference as a penalty: the true closed form, or Flow-GRPO's (``DenoisingPolicy.kl_to_reference``)."""


@dataclass
class StepDistribution:
    """N(mean, std^2 I) over the next latent; ``pred_original`` is the model's x0 estimate at this step."""

    mean: torch.Tensor
    std: torch.Tensor  # broadcastable to mean; 0 where the step is deterministic
    pred_original: torch.Tensor

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * noise


def step_dt(obs: dict[str, torch.Tensor]) -> torch.Tensor:
    """|dt| of each step (B,): a flow sampler's sigma - sigma_next (Flow-GRPO's KL and GRPO-Guard's weights)."""
    return (obs["timestep"] - obs["next_timestep"]).float().abs()


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
           = (expm1(2 r) - 2 r) / 2 + (mean_p - mean_q)^2 / (2 std_q^2),      r = log1p((std_p - std_q) / std_q)

    computed in the second form: the first's 1/2 and -1/2 cancel, and in fp32 they round away most of a small
    mean term (a KL of 1e-7 per dim, against 0.5, keeps one or two digits). The std term is exactly 0 for equal
    stds, and for near ones (|2 r| < 0.1) its Taylor series (2 r)^2/2 + (2 r)^3/6 + ... avoids expm1(2 r) - 2 r's
    cancellation. Two step policies at the same state share the schedule's std, so it is (mean_p - mean_q)^2 /
    (2 std^2) exactly.
    """
    u = 2 * torch.log1p((std_p - std_q) / std_q)  # std_p - std_q is exact where they are near: r keeps its digits
    series = u * u * (1 / 2 + u * (1 / 6 + u * (1 / 24 + u * (1 / 120 + u * (1 / 720 + u / 5040)))))
    std_term = 0.5 * torch.where(u.abs() < 0.1, series, torch.expm1(u) - u)  # in the stds' own (broadcast) shape
    elementwise = (std_term + (mean_p - mean_q) ** 2 / (2 * std_q**2)).expand_as(mean_p)
    dims = tuple(range(1, elementwise.ndim))
    return elementwise.mean(dim=dims) if reduction == "mean" else elementwise.sum(dim=dims)
