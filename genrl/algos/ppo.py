"""Clipped PPO on the denoising MDP, as DDPO and RLCM use it (RLCM Algorithm 1; DDPO eq. 4).

    ratio = exp(log pi_theta(a_t | s_t) - log pi_old(a_t | s_t))
    A     = clamp(advantage, -adv_clip_max, adv_clip_max)
    loss  = mean(max(-A * ratio, -A * clamp(ratio, 1 - clip_range, 1 + clip_range)))  [+ kl_coef * KL]

Every step of a trajectory shares the trajectory's advantage (the reward is terminal and undiscounted). An epoch:
sample every batch, then ``inner_epochs`` shuffled passes over the samples in minibatches, an optimizer step every
``gradient_accumulation_steps`` of them (``genrl.algos.common`` has the accumulation and multi-process semantics),
on the first ``timestep_fraction`` of each trajectory's steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from genrl.algos.base import EpochBatch
from genrl.algos.common import (
    Collective,
    EpochMeans,
    OneProcess,
    PolicyGradientConfig,
    check_policy_gradient,
    check_settings,
    global_minibatches,
    optimizer_step,
    sample_epoch,
    trained_steps,
)
from genrl.buffer import Chunk, TrajectoryBuffer
from genrl.policy import DenoisingPolicy
from genrl.precision import NO_SCALING, LossScaling


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
    clip_range: float = 1e-4
    """Ratio clip epsilon (RLCM and DDPO: 1e-4)."""
    inner_epochs: int = 1
    """Passes over each epoch's samples."""


class PPO:
    """RLCM's and DDPO's algorithm: sample the epoch, then ``inner_epochs`` clipped passes over it."""

    Config = PPOConfig

    def __init__(self, config: PPOConfig):
        self.config = config

    def validate(self, run: Any) -> None:
        check_policy_gradient(self.config, run)
        check_settings(self.config, run, ("clip_range", "inner_epochs"))

    def update(self, policy: DenoisingPolicy, optimizer: torch.optim.Optimizer, batch: EpochBatch) -> dict[str, float]:
        buffer, stats = sample_epoch(batch)  # this process's rows of the global batch, with their advantages
        if buffer.num_global:  # every group may have been dropped for want of signal
            stats.update(self.train_on(buffer, policy, optimizer, batch.generator, batch.processes, batch.loss_scaling))
        return stats

    def passes(self) -> int:
        return self.config.inner_epochs

    def loss(self, log_prob: torch.Tensor, chunk: Chunk) -> tuple[torch.Tensor, dict[str, float]]:
        """The clipped surrogate of a chunk, and its statistics."""
        cfg = self.config
        loss, ratio = clipped_surrogate_loss(
            log_prob, chunk.old_log_probs, chunk.advantages, cfg.clip_range, cfg.adv_clip_max
        )
        with torch.no_grad():
            stats = {
                "approx_kl": 0.5 * ((log_prob - chunk.old_log_probs) ** 2).mean().item(),
                "clipfrac": ((ratio - 1).abs() > cfg.clip_range).float().mean().item(),
                "ratio_mean": ratio.mean().item(),
            }
            # The first (global) minibatch runs before any optimizer step: its ratio is 1 when training
            # reproduces sampling exactly (same weights, same maths), so it is logged as a check.
            if chunk.minibatch == 0:
                stats["ratio_mean_first_minibatch"] = stats["ratio_mean"]
        return loss, stats

    def train_on(
        self,
        buffer: TrajectoryBuffer,
        policy: DenoisingPolicy,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        processes: Collective | None = None,
        scaling: LossScaling = NO_SCALING,
    ) -> dict[str, float]:
        """The passes over a buffer whose advantages are set; the epoch's pair-weighted means of the statistics."""
        cfg, processes = self.config, processes or OneProcess()
        buffer = buffer.first_steps(trained_steps(buffer.num_steps, cfg.timestep_fraction))  # the trained steps
        params = policy.trainable_parameters()
        means = EpochMeans()
        policy.train()
        for pass_index in range(self.passes()):
            for minibatch in global_minibatches(buffer, cfg, generator, processes, pass_index, scaling):
                for chunk in minibatch.chunks:
                    dist = policy.distribution(chunk.obs)
                    loss, stats = self.loss(policy.action_log_prob(dist, chunk.next_latents), chunk)
                    if cfg.kl_coef > 0:  # per (trajectory, step) pair, to the model without its LoRA
                        kl = policy.kl_to_reference(chunk.obs, dist, cfg.kl_form).mean()
                        loss = loss + cfg.kl_coef * kl
                        stats["kl"] = kl.item()
                    minibatch.backward(loss, chunk)
                    means.add({"loss": loss.item(), **stats}, weight=len(chunk.sample_index))
                if minibatch.ends_step:  # on every process, with or without rows in the step's minibatches
                    means.add(optimizer_step(params, optimizer, cfg.max_grad_norm, minibatch.sum_gradients, scaling))
        policy.eval()
        stats = means.means(processes)
        if "ratio_mean_first_minibatch" in stats:  # last, as it always was
            stats["ratio_mean_first_minibatch"] = stats.pop("ratio_mean_first_minibatch")
        return stats
