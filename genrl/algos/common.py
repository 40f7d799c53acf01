"""The optimisation loop every policy-gradient algorithm shares: minibatches, accumulation, KL, clipping, stepping.

Accumulation semantics: an optimizer step follows every ``gradient_accumulation_steps`` minibatches of
``train_batch_size`` trajectories, and its gradient is the mean over all (trajectory, step) pairs they hold,
however many steps go into one forward pass. Where the minibatches of a pass do not divide evenly, the last
optimizer step of the pass takes the ones left over (its gradient is still their mean).

On N processes (``processes``) the minibatches are the global batch's (``TrajectoryBuffer.minibatches``): a global
minibatch holds ``N x train_batch_size`` trajectories, each process computes the loss of its rows of it (none,
possibly), weights each chunk by its share of the optimizer step's global (trajectory, step) pairs, and the
gradients are summed over processes before clipping. So an optimizer step's gradient is the mean over its global
pairs, as on one process, and every process takes the same step. The logged statistics are pair-weighted means
over the global batch (gradient norm: per optimizer step), summed over processes before dividing.

KL regularisation (``kl_coef`` > 0) adds ``kl_coef * KL(pi_theta || pi_ref)`` per (trajectory, step) pair, in
closed form for the two Gaussians of a step; the reference is the same UNet with the LoRA switched off.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from genrl.advantages import informative_groups
from genrl.algos.base import EpochBatch
from genrl.buffer import Chunk, TrajectoryBuffer
from genrl.policy import DenoisingPolicy

# (log-probs of the chunk's actions under the current policy, chunk) -> (loss averaged over the chunk, stats)
LossFn = Callable[[torch.Tensor, Chunk], tuple[torch.Tensor, dict[str, float]]]
# Reduces (sums or averages) the trainable parameters' gradients over processes in place (genrl.distributed)
GradientSync = Callable[[list[torch.nn.Parameter]], None]


class Collective(Protocol):
    """What ``optimize`` needs of the run's processes (``genrl.distributed.Processes``); None: one process."""

    count: int

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None: ...

    def sum_totals(self, totals: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]: ...


@dataclass
class PolicyGradientConfig:
    """The hyperparameters of the shared optimisation loop (their help: ``genrl.config.TrainConfig``)."""

    train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    steps_per_forward: int = 1
    max_grad_norm: float = 5.0
    kl_coef: float = 0.0
    adv_clip_max: float = 10.0


class EpochMeans:
    """Per-key weighted means of the statistics an epoch's optimisation reports, however many times each was
    added (weight 1 unless given), over all processes when ``means`` is given them."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.weights: dict[str, float] = defaultdict(float)

    def add(self, stats: dict[str, float], weight: float = 1) -> None:
        for key, value in stats.items():
            self.sums[key] += value * weight
            self.weights[key] += weight

    def means(self, processes: Collective | None = None) -> dict[str, float]:
        """The means; with ``processes`` (every process calls it), of the sums and weights of all processes."""
        totals = {key: (self.sums[key], self.weights[key]) for key in self.sums}
        if processes is not None and processes.count > 1:
            totals = processes.sum_totals(totals)
        return {key: total / weight for key, (total, weight) in totals.items()}


def optimizer_step(
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    max_grad_norm: float,
    reduce_gradients: GradientSync | None = None,
) -> float:
    """Reduce over processes, clip, step, clear. Returns the gradient norm before clipping."""
    if reduce_gradients is not None:
        reduce_gradients(params)
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def optimize(
    policy: DenoisingPolicy,
    optimizer: torch.optim.Optimizer,
    buffer: TrajectoryBuffer,
    loss_fn: LossFn,
    cfg: PolicyGradientConfig,
    generator: torch.Generator,
    passes: int = 1,
    processes: Collective | None = None,
) -> dict[str, float]:
    """Runs ``passes`` shuffled passes over the buffer; returns the epoch's pair-weighted means of the loss's
    stats. ``processes`` (multi-process training): the buffer holds this process's rows of the global batch
    (``TrajectoryBuffer.place``), and every process calls this with the same generator state."""
    count = 1 if processes is None else processes.count
    batch_size = cfg.train_batch_size * count  # a global minibatch
    sizes = buffer.minibatch_sizes(batch_size)
    accumulation = cfg.gradient_accumulation_steps
    sum_gradients = processes.sum_gradients if count > 1 else None
    means = EpochMeans()
    params = policy.trainable_parameters()
    policy.train()
    for p in range(passes):
        for i, chunks in enumerate(buffer.minibatches(batch_size, cfg.steps_per_forward, generator)):
            group_start = i - i % accumulation
            group_end = min(group_start + accumulation, len(sizes))
            pairs_per_step = sum(sizes[group_start:group_end]) * buffer.num_steps  # over all processes
            for chunk in chunks:  # none where this process holds no row of the minibatch
                chunk.minibatch += p * len(sizes)
                dist = policy.distribution(chunk.obs)
                loss, stats = loss_fn(policy.action_log_prob(dist, chunk.next_latents), chunk)
                if cfg.kl_coef > 0:
                    kl = policy.kl_to_reference(chunk.obs, dist).mean()
                    loss = loss + cfg.kl_coef * kl
                    stats["kl"] = kl.item()
                # Weight by the chunk's share of the optimizer step, so that neither chunking nor the split over
                # processes changes the gradient (summed over processes: the mean over the step's global pairs).
                pairs = len(chunk.sample_index)
                (loss * (pairs / pairs_per_step)).backward()
                means.add({"loss": loss.item(), **stats}, weight=pairs)
            if i + 1 == group_end:  # every process, with or without rows in the step's minibatches
                norm = optimizer_step(params, optimizer, cfg.max_grad_norm, sum_gradients)
                means.add({"grad_norm": norm})
    policy.eval()
    return means.means(processes)


def policy_gradient_buffer(batch: EpochBatch) -> tuple[TrajectoryBuffer, dict[str, float]]:
    """PPO's and REINFORCE's epoch before the update: sample every batch, then keep this process's rows of the
    global batch with their advantages. Returns the buffer and its statistics."""
    rollouts = [batch.sample(i) for i in range(len(batch.batches))]
    buffer = TrajectoryBuffer()
    for rollout in rollouts:  # with --async-rewards, the rewards were computed while sampling went on
        buffer.add_rollout(rollout.resolve())
    advantages = batch.advantages()  # every process computes the global batch's, then keeps its own rows
    buffer.place(batch.processes.rank, batch.processes.count)  # minibatches are cut from the global batch
    buffer.advantages = advantages[buffer.global_rows.to(advantages.device)]
    stats: dict[str, float] = {}
    # A group of equal rewards teaches nothing: leave it out of the update. Every process drops the same groups
    # of the global batch, so N processes cut the minibatches of one (a process may hold none of some of them).
    if batch.group_size > 1:
        kept = informative_groups(advantages, batch.group_size)
        stats["groups_kept_fraction"] = len(kept) / len(advantages)
        buffer = buffer.subset(kept)
    return buffer, stats


class BufferAlgorithm:
    """PPO's and REINFORCE's shape: sample the whole epoch, then ``train_on`` the buffer of this process's rows."""

    def __init__(self, config: PolicyGradientConfig):
        self.config = config

    def update(self, policy: DenoisingPolicy, optimizer: torch.optim.Optimizer, batch: EpochBatch) -> dict[str, float]:
        buffer, stats = policy_gradient_buffer(batch)
        if buffer.num_global:
            stats.update(self.train_on(buffer, policy, optimizer, batch.generator, batch.processes))
        return stats

    def train_on(
        self,
        buffer: TrajectoryBuffer,
        policy: DenoisingPolicy,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        processes: Collective | None = None,
    ) -> dict[str, float]:
        raise NotImplementedError
