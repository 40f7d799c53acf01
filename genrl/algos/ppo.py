"""Clipped PPO on the denoising MDP, as DDPO and RLCM use it (RLCM Algorithm 1; DDPO eq. 4).

    ratio = exp(log pi_theta(a_t | s_t) - log pi_old(a_t | s_t))
    A     = clamp(advantage, -adv_clip_max, adv_clip_max)
    loss  = mean(max(-A * ratio, -A * clamp(ratio, 1 - clip_range, 1 + clip_range)))

Every step of a trajectory shares the trajectory's advantage (the reward is terminal and undiscounted).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrl.algos.common import BufferAlgorithm, Collective, PolicyGradientConfig, optimize
from genrl.buffer import Chunk, TrajectoryBuffer
from genrl.policy import DenoisingPolicy


def clipped_surrogate_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float, adv_clip_max: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PPO loss above, and the ratio it used."""
    advantages = advantages.clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio


@dataclass
class PPOConfig(PolicyGradientConfig):
    clip_range: float = 1e-2
    inner_epochs: int = 1


class PPO(BufferAlgorithm):
    """RLCM's and DDPO's algorithm: sample the epoch, then ``inner_epochs`` clipped passes over it."""

    Config = PPOConfig

    def train_on(
        self,
        buffer: TrajectoryBuffer,
        policy: DenoisingPolicy,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        processes: Collective | None = None,
    ) -> dict[str, float]:
        """``inner_epochs`` passes of the clipped loss over the buffer (with its advantages)."""
        cfg = self.config

        def loss_fn(log_prob: torch.Tensor, chunk: Chunk) -> tuple[torch.Tensor, dict[str, float]]:
            loss, ratio = clipped_surrogate_loss(
                log_prob, chunk.old_log_probs, chunk.advantages, cfg.clip_range, cfg.adv_clip_max
            )
            with torch.no_grad():
                chunk_stats = {
                    "approx_kl": 0.5 * ((log_prob - chunk.old_log_probs) ** 2).mean().item(),
                    "clipfrac": ((ratio - 1).abs() > cfg.clip_range).float().mean().item(),
                    "ratio_mean": ratio.mean().item(),
                }
                # The first (global) minibatch runs before any optimizer step: its ratio is 1 when training
                # reproduces sampling exactly (same weights, same maths), so it is logged as a check.
                if chunk.minibatch == 0:
                    chunk_stats["ratio_mean_first_minibatch"] = chunk_stats["ratio_mean"]
            return loss, chunk_stats

        stats = optimize(policy, optimizer, buffer, loss_fn, cfg, generator, cfg.inner_epochs, processes)
        stats["ratio_mean_first_minibatch"] = stats.pop("ratio_mean_first_minibatch")  # last, as it always was
        return stats
