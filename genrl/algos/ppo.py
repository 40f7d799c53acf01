"""Clipped PPO on the denoising MDP, as DDPO and RLCM use it (RLCM Algorithm 1; DDPO eq. 4).

    ratio = exp(log pi_theta(a_t | s_t) - log pi_old(a_t | s_t))
    A     = clamp(advantage, -adv_clip_max, adv_clip_max)
    loss  = mean(max(-A * ratio, -A * clamp(ratio, 1 - clip_range, 1 + clip_range)))  [+ kl_coef * KL]

Every step of a trajectory shares the trajectory's advantage (the reward is terminal and undiscounted). An epoch:
sample every batch, then ``inner_epochs`` shuffled passes over the samples in minibatches, an optimizer step every
``gradient_accumulation_steps`` of them (``genrl.algos.common`` has the accumulation and multi-process semantics),
on the first ``timestep_fraction`` of each trajectory's steps.

GRPO-Guard (arXiv 2510.22319) is two settings of it. ``ratio_norm``: with s the step's std (a flow SDE step's
std_dev_t sqrt(|dt|)), eps = (a_t - mean_old) / s the noise the step drew and mse = mean_d (mean_theta - mean_old)^2,

    ratio = exp(s (log pi_theta - log pi_old) + mse / (2 s)) = exp(mean_d[(mean_theta - mean_old) eps])

(RatioNorm: the log-ratio less its negative bias -mse / (2 s^2) and its 1 / s scale, which differ from step to step).
``step_weight inverse_dt``: each step's term of the loss above times 1 / |dt| = 1 / (sigma - sigma_next).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from genrl.algos.base import EpochBatch
from genrl.algos.common import (
    Collective,
    OneProcess,
    PolicyGradientConfig,
    check_policy_gradient,
    check_settings,
    flag,
    sample_epoch,
    train_minibatches,
    trained_steps,
)
from genrl.buffer import Chunk, TrajectoryBuffer
from genrl.config_sampler import sampler_name
from genrl.errors import GenrlError
from genrl.policy import DenoisingPolicy
from genrl.precision import NO_SCALING, LossScaling
from genrl.steps import LogProbReduction, StepDistribution, step_dt

StepWeight = Literal["none", "inverse_dt"]


def clipped_surrogate(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    adv_clip_max: float,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PPO loss above of each (trajectory, step) pair's log-ratio, averaged (with ``weights``: each pair's term
    times its weight), and the ratio it used."""
    advantages = advantages.clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped)
    return (loss if weights is None else loss * weights).mean(), ratio


def clipped_surrogate_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float, adv_clip_max: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The PPO loss above, and the ratio it used."""
    return clipped_surrogate(log_prob - old_log_prob, advantages, clip_range, adv_clip_max)


def ratio_norm_log_ratio(
    mean: torch.Tensor,
    old_mean: torch.Tensor,
    std: torch.Tensor,
    next_latents: torch.Tensor,
    reduction: LogProbReduction = "mean",
) -> torch.Tensor:
    """RatioNorm's log-ratio of each step (B,): reduce_d[(mean - old_mean) eps], eps = (next_latents - old_mean) / std
    the noise the step drew, reduced over the latent like the log-prob (GRPO-Guard's mean; a sum with "sum").

    For a std s that both policies share (every sampler's: the schedule sets it) it is s (log pi - log pi_old) +
    reduce_d[(mean - old_mean)^2] / (2 s), the paper's form (and Flow-Factory's GRPOGuardTrainer's); written as
    above it needs no log-prob, holds for any Gaussian step, and is exactly 0 where the means are equal.
    """
    std = std.detach().expand_as(mean)
    elementwise = (mean - old_mean) * ((next_latents - old_mean) / std)
    dims = tuple(range(1, elementwise.ndim))
    return elementwise.mean(dim=dims) if reduction == "mean" else elementwise.sum(dim=dims)


def step_weights(kind: StepWeight, obs: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Each pair's weight in the clipped loss: none, or GRPO-Guard's 1 / |dt| (flow sigmas: 1 / (sigma -
    sigma_next))."""
    if kind == "none":
        return None
    return 1 / step_dt(obs)


@dataclass
class PPOConfig(PolicyGradientConfig):
    clip_range: float = 1e-4
    """Ratio clip epsilon (RLCM and DDPO: 1e-4)."""
    inner_epochs: int = 1
    """Passes over each epoch's samples."""
    ratio_norm: bool = False
    """GRPO-Guard's RatioNorm (arXiv 2510.22319): the ratio exp(mean_d[(mean - mean_old) eps]), eps the noise the
    step drew, which is exp(s (log pi - log pi_old) + mse / (2 s)) for the step's std s: Flow-GRPO's log-ratio
    without its negative bias -mse / (2 s^2) and its 1 / s scale, so that it centres on 1 at every step. Every
    sampler (each stochastic step is a Gaussian whose std its schedule sets)."""
    step_weight: StepWeight = "none"
    """none, or inverse_dt: each step's clipped loss times 1 / |dt| = 1 / (sigma - sigma_next), GRPO-Guard's
    gradient reweighting in Flow-GRPO's form (Flow-Factory's GRPO-Guard leaves it out); the KL is not weighted.
    flow_sde sampler only."""


class PPO:
    """RLCM's and DDPO's algorithm: sample the epoch, then ``inner_epochs`` clipped passes over it."""

    Config = PPOConfig

    def __init__(self, config: PPOConfig):
        self.config = config

    @property
    def needs_step_means(self) -> bool:
        """RatioNorm compares each step's mean with the one it was sampled with: only then do rollouts keep them."""
        return getattr(self.config, "ratio_norm", False)

    def validate(self, run: Any) -> None:
        check_policy_gradient(self.config, run)
        check_settings(self.config, run, ("clip_range", "inner_epochs"))
        if self.config.step_weight == "inverse_dt" and sampler_name(run) != "flow_sde":
            raise GenrlError(
                f"{flag(run, 'step_weight')} inverse_dt weighs the flow_sde sampler's steps by 1/|dt| (its mean moves "
                f"with the velocity by dt), and this run samples with {sampler_name(run)}; use --env flow (flow_sde), "
                f"or {flag(run, 'step_weight')} none"
            )

    def update(self, policy: DenoisingPolicy, optimizer: torch.optim.Optimizer, batch: EpochBatch) -> dict[str, float]:
        buffer, stats = sample_epoch(batch)  # this process's rows of the global batch, with their advantages
        if buffer.num_global:  # every group may have been dropped for want of signal
            stats.update(self.train_on(buffer, policy, optimizer, batch.generator, batch.processes, batch.loss_scaling))
        return stats

    def passes(self) -> int:
        return self.config.inner_epochs

    def loss(
        self, log_prob: torch.Tensor, chunk: Chunk, log_ratio: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The clipped surrogate of a chunk, and its statistics; ``log_ratio`` (RatioNorm's) replaces log_prob -
        old_log_prob."""
        cfg = self.config
        if log_ratio is None:
            log_ratio = log_prob - chunk.old_log_probs
        weights = step_weights(cfg.step_weight, chunk.obs)
        loss, ratio = clipped_surrogate(log_ratio, chunk.advantages, cfg.clip_range, cfg.adv_clip_max, weights)
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

    @staticmethod
    def ratio_norm(policy: DenoisingPolicy, dist: StepDistribution, chunk: Chunk) -> torch.Tensor:
        if chunk.old_means is None:
            raise RuntimeError("RatioNorm needs each step's mean at sampling time: fill the buffer with add_rollout")
        return ratio_norm_log_ratio(dist.mean, chunk.old_means, dist.std, chunk.next_latents, policy.reduction)

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

        def chunk_loss(chunk: Chunk) -> tuple[torch.Tensor, dict[str, float]]:
            dist = policy.distribution(chunk.obs)
            log_prob = policy.action_log_prob(dist, chunk.next_latents)
            if getattr(cfg, "ratio_norm", False):
                loss, stats = self.loss(log_prob, chunk, self.ratio_norm(policy, dist, chunk))
            else:
                loss, stats = self.loss(log_prob, chunk)
            if cfg.kl_coef > 0:  # per (trajectory, step) pair, to the model without its LoRA
                kl = policy.kl_to_reference(chunk.obs, dist, cfg.kl_form).mean()
                loss = loss + cfg.kl_coef * kl
                stats["kl"] = kl.item()
            return loss, stats

        stats, _ = train_minibatches(
            buffer, cfg, policy, optimizer, chunk_loss, generator, processes, scaling, self.passes()
        )
        if "ratio_mean_first_minibatch" in stats:  # last, as it always was
            stats["ratio_mean_first_minibatch"] = stats.pop("ratio_mean_first_minibatch")
        return stats
