"""The optimisation loop every policy-gradient algorithm shares: minibatches, accumulation, clipping, stepping.

Accumulation semantics: an optimizer step follows every ``gradient_accumulation_steps`` minibatches of
``train_batch_size`` trajectories, and its gradient is the mean over all (trajectory, step) pairs they hold,
however many steps go into one forward pass. Where the minibatches of a pass do not divide evenly, the last
optimizer step of the pass takes the ones left over (its gradient is still their mean).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

import torch

from genrl.buffer import Chunk, TrajectoryBuffer
from genrl.policy import DenoisingPolicy

# (policy, chunk) -> (loss averaged over the chunk, {stat name: value})
LossFn = Callable[[DenoisingPolicy, Chunk], tuple[torch.Tensor, dict[str, float]]]


class TrainingKnobs(Protocol):
    """The fields of ``TrainConfig`` the loop reads."""

    train_batch_size: int
    gradient_accumulation_steps: int
    steps_per_forward: int
    max_grad_norm: float


def optimize(
    policy: DenoisingPolicy,
    optimizer: torch.optim.Optimizer,
    buffer: TrajectoryBuffer,
    loss_fn: LossFn,
    cfg: TrainingKnobs,
    generator: torch.Generator,
    passes: int = 1,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, float]:
    """Runs ``passes`` shuffled passes over the buffer; returns the per-epoch means of the loss's stats."""
    train_batch_size, gradient_accumulation_steps = cfg.train_batch_size, cfg.gradient_accumulation_steps
    minibatches = len(buffer) // train_batch_size
    pairs_per_minibatch = train_batch_size * buffer.num_steps
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    params = policy.trainable_parameters()
    policy.train()
    for _ in range(passes):
        for i, chunks in enumerate(buffer.minibatches(train_batch_size, cfg.steps_per_forward, generator)):
            group_start = i - i % gradient_accumulation_steps
            group_end = min(group_start + gradient_accumulation_steps, minibatches)
            pairs_per_step = pairs_per_minibatch * (group_end - group_start)
            for chunk in chunks:
                loss, stats = loss_fn(policy, chunk)
                # Weight by the chunk's share of the optimizer step, so chunking leaves the gradient unchanged.
                (loss * (len(chunk.sample_index) / pairs_per_step)).backward()
                for key, value in {"loss": loss.item(), **stats}.items():
                    sums[key] += value
                    counts[key] += 1
            if i + 1 == group_end:
                sums["grad_norm"] += float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                counts["grad_norm"] += 1
                optimizer.step()
                if lr_scheduler is not None:
                    lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
    policy.eval()
    return {key: sums[key] / counts[key] for key in sums}
