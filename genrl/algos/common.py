"""The optimisation loop every policy-gradient algorithm shares: minibatches, accumulation, KL, clipping, stepping.

Accumulation semantics: an optimizer step follows every ``gradient_accumulation_steps`` minibatches of
``train_batch_size`` trajectories, and its gradient is the mean over all (trajectory, step) pairs they hold,
however many steps go into one forward pass. Where the minibatches of a pass do not divide evenly, the last
optimizer step of the pass takes the ones left over (its gradient is still their mean).

KL regularisation (``kl_coef`` > 0) adds ``kl_coef * KL(pi_theta || pi_ref)`` per (trajectory, step) pair, in
closed form for the two Gaussians of a step; the reference is the same UNet with the LoRA switched off.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

import torch

from genrl.buffer import Chunk, TrajectoryBuffer
from genrl.policy import DenoisingPolicy

# (log-probs of the chunk's actions under the current policy, chunk) -> (loss averaged over the chunk, stats)
LossFn = Callable[[torch.Tensor, Chunk], tuple[torch.Tensor, dict[str, float]]]
# Averages the trainable parameters' gradients over processes in place (genrl.distributed.Processes)
GradientSync = Callable[[list[torch.nn.Parameter]], None]


class TrainingKnobs(Protocol):
    """The fields of ``TrainConfig`` the loop reads."""

    train_batch_size: int
    gradient_accumulation_steps: int
    steps_per_forward: int
    max_grad_norm: float
    kl_coef: float


class EpochMeans:
    """Per-key means of the statistics an epoch's optimisation reports, however many times each was added."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, stats: dict[str, float]) -> None:
        for key, value in stats.items():
            self.sums[key] += value
            self.counts[key] += 1

    def means(self) -> dict[str, float]:
        return {key: self.sums[key] / self.counts[key] for key in self.sums}


def optimizer_step(
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    max_grad_norm: float,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    average_gradients: GradientSync | None = None,
) -> float:
    """Average over processes, clip, step, clear. Returns the gradient norm before clipping."""
    if average_gradients is not None:
        average_gradients(params)
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    optimizer.step()
    if lr_scheduler is not None:
        lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def optimize(
    policy: DenoisingPolicy,
    optimizer: torch.optim.Optimizer,
    buffer: TrajectoryBuffer,
    loss_fn: LossFn,
    cfg: TrainingKnobs,
    generator: torch.Generator,
    passes: int = 1,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    average_gradients: GradientSync | None = None,
) -> dict[str, float]:
    """Runs ``passes`` shuffled passes over the buffer; returns the per-epoch means of the loss's stats.
    ``average_gradients`` (multi-process training) averages the gradient over processes before each step."""
    sizes = buffer.minibatch_sizes(cfg.train_batch_size)
    accumulation = cfg.gradient_accumulation_steps
    means = EpochMeans()
    params = policy.trainable_parameters()
    policy.train()
    for _ in range(passes):
        for i, chunks in enumerate(buffer.minibatches(cfg.train_batch_size, cfg.steps_per_forward, generator)):
            group_start = i - i % accumulation
            group_end = min(group_start + accumulation, len(sizes))
            pairs_per_step = sum(sizes[group_start:group_end]) * buffer.num_steps
            for chunk in chunks:
                dist = policy.distribution(chunk.obs)
                loss, stats = loss_fn(policy.action_log_prob(dist, chunk.next_latents), chunk)
                if cfg.kl_coef > 0:
                    kl = policy.kl_to_reference(chunk.obs, dist).mean()
                    loss = loss + cfg.kl_coef * kl
                    stats["kl"] = kl.item()
                # Weight by the chunk's share of the optimizer step, so chunking leaves the gradient unchanged.
                (loss * (len(chunk.sample_index) / pairs_per_step)).backward()
                means.add({"loss": loss.item(), **stats})
            if i + 1 == group_end:
                norm = optimizer_step(params, optimizer, cfg.max_grad_norm, lr_scheduler, average_gradients)
                means.add({"grad_norm": norm})
    policy.eval()
    return means.means()
