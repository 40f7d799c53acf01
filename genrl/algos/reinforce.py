"""REINFORCE (Williams, 1992) on the denoising MDP: one pass, no ratio, no clipping of the policy change.

    A    = clamp(advantage, -adv_clip_max, adv_clip_max)
    loss = -mean(A * log pi_theta(a_t | s_t))  [+ kl_coef * KL]

Its gradient equals PPO's where the ratio is 1 (the first minibatch); it does not hold the policy near the one
that sampled, so it takes a single pass over each epoch's samples. The minibatch loop is PPO's (``ppo.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from genrl.algos.common import PolicyGradientConfig, check_policy_gradient
from genrl.algos.ppo import PPO
from genrl.buffer import Chunk


def reinforce_loss(log_prob: torch.Tensor, advantages: torch.Tensor, adv_clip_max: float) -> torch.Tensor:
    return -(advantages.clamp(-adv_clip_max, adv_clip_max) * log_prob).mean()


class REINFORCE(PPO):
    """One unclipped pass over the epoch's samples."""

    Config = PolicyGradientConfig

    def validate(self, run: Any) -> None:
        check_policy_gradient(self.config, run)

    def passes(self) -> int:
        return 1

    def loss(self, log_prob: torch.Tensor, chunk: Chunk) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            stats = {"approx_kl": 0.5 * ((log_prob - chunk.old_log_probs) ** 2).mean().item()}
        return reinforce_loss(log_prob, chunk.advantages, self.config.adv_clip_max), stats
