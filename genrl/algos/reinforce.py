"""REINFORCE (Williams, 1992) on the denoising MDP: one pass, no ratio, no clipping of the policy change.

    A    = clamp(advantage, -adv_clip_max, adv_clip_max)
    loss = -mean(A * log pi_theta(a_t | s_t))

Its gradient equals PPO's where the ratio is 1 (the first minibatch); it does not hold the policy near the one
that sampled, so it takes a single pass over each epoch's samples.
"""

from __future__ import annotations

import torch

from genrl.algos.common import BufferAlgorithm, Collective, PolicyGradientConfig, optimize
from genrl.buffer import Chunk, TrajectoryBuffer
from genrl.policy import DenoisingPolicy


def reinforce_loss(log_prob: torch.Tensor, advantages: torch.Tensor, adv_clip_max: float) -> torch.Tensor:
    return -(advantages.clamp(-adv_clip_max, adv_clip_max) * log_prob).mean()


class REINFORCE(BufferAlgorithm):
    """One unclipped pass over the epoch's samples."""

    Config = PolicyGradientConfig

    def train_on(
        self,
        buffer: TrajectoryBuffer,
        policy: DenoisingPolicy,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        processes: Collective | None = None,
    ) -> dict[str, float]:
        """One pass of the REINFORCE loss over the buffer (with its advantages)."""
        cfg = self.config

        def loss_fn(log_prob: torch.Tensor, chunk: Chunk) -> tuple[torch.Tensor, dict[str, float]]:
            with torch.no_grad():
                chunk_stats = {"approx_kl": 0.5 * ((log_prob - chunk.old_log_probs) ** 2).mean().item()}
            return reinforce_loss(log_prob, chunk.advantages, cfg.adv_clip_max), chunk_stats

        return optimize(policy, optimizer, buffer, loss_fn, cfg, generator, 1, processes)
