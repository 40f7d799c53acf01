"""The algorithm interface: what ``genrl.train`` calls once an epoch, and what it hands over.

An algorithm is a class with a typed ``Config`` dataclass (its hyperparameters, which it owns: flags
``--NAME.FIELD``, one default each) and ``update(policy, optimizer, batch: EpochBatch) -> dict[str, float]`` (the
epoch's training statistics); optional hooks ``validate(run_config)`` and ``prepare(pipeline, reward)`` (``Algorithm``
below), ``state_dict()`` / ``load_state_dict(state)`` for what it keeps between epochs (saved with each checkpoint,
restored on ``--resume``: DiffusionNFT's old weights), and ``needs_step_means`` (True: rollouts keep each step's
mean at sampling time, as GRPO-Guard's RatioNorm needs).

``batch.sample(i)`` samples the epoch's i-th batch (``grad_steps=K`` keeps a graph over its last K steps), so an
algorithm decides how and when it samples: PPO samples everything and then trains, DPG backpropagates each batch
as it is scored. ``batch.advantages()`` gives the advantages of the global batch (every process's rows; a process's
own sit at ``TrajectoryBuffer.place``'s global rows).

Built-in: ``ppo``, ``reinforce``, ``dpg``, ``nft``, ``dpo`` (``registry.py``). Others plug in as ``--algo
package.module:Class`` or through the entry point group ``genrl.algorithms``, as rewards do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from genrl.errors import GenrlError
from genrl.plugins import describe
from genrl.policy import DenoisingPolicy
from genrl.precision import NO_SCALING, LossScaling
from genrl.rollout import Rollout, SamplingBatch


@dataclass
class EpochBatch:
    """One epoch of this process, as an algorithm sees it."""

    batches: list[SamplingBatch]
    """This process's sampling batches (prompts and seeds)."""
    sampler: Callable[[SamplingBatch, int], Rollout]
    """(batch, grad_steps) -> its rollout; ``sample`` calls it."""
    advantages_of: Callable[[torch.Tensor], torch.Tensor]
    """The global batch's rewards -> its advantages (per-prompt statistics, batch or group normalisation)."""
    processes: Any
    """``genrl.distributed.Processes``: rank, count, gather, sum_gradients, average_gradients."""
    generator: torch.Generator
    """Seeded for the epoch: shuffles minibatches the same way on every process."""
    group_size: int = 1
    loss_scaling: LossScaling = NO_SCALING
    """fp16's gradient scaler (``genrl.precision``): ``loss_scaling.backward(loss)`` where an algorithm calls
    ``loss.backward()``, and ``genrl.algos.common.optimizer_step`` takes it."""
    rollouts: list[Rollout] = field(default_factory=list)
    """What ``sample`` returned, in order; ``genrl.train`` logs the rewards and sample grids from it."""
    _gathered: list[torch.Tensor] = field(default_factory=list, repr=False)
    _advantages: tuple[int, torch.Tensor] | None = field(default=None, repr=False)

    def sample(self, index: int, grad_steps: int = 0) -> Rollout:
        rollout = self.sampler(self.batches[index], grad_steps)
        self.rollouts.append(rollout)
        return rollout

    def global_rewards(self) -> torch.Tensor:
        """The rewards of every rollout sampled so far, over all processes, in the order one process samples them."""
        for rollout in self.rollouts[len(self._gathered) :]:  # each batch gathered once, however often asked
            self._gathered.append(self.processes.gather(rollout.resolve().rewards.detach()))
        return torch.cat(self._gathered)

    def advantages(self) -> torch.Tensor:
        """The advantages of the global batch of every rollout sampled so far. Computed once for them, however
        often asked: the per-prompt statistics must see each reward once."""
        if self._advantages is None or self._advantages[0] != len(self.rollouts):
            self._advantages = (len(self.rollouts), self.advantages_of(self.global_rewards()))
        return self._advantages[1]


class Algorithm(Protocol):
    """What ``genrl.train`` calls. ``validate`` and ``prepare`` are optional hooks; training code never asks which
    algorithm it runs."""

    Config: type
    """A dataclass of the algorithm's hyperparameters, with docstrings: ``--NAME.FIELD`` flags, config.json's
    ``"NAME": {...}``, restored on ``--resume``. Built with its defaults, or the preset's and the flags' values."""

    def __init__(self, config: Any) -> None: ...

    def validate(self, run: Any) -> None:
        """Refuse settings that cannot work together with the run's (``TrainConfig``): raise ``GenrlError``."""

    def prepare(self, pipeline: Any, reward: Any) -> None:
        """Once, before the first epoch: check the reward, set the model up (gradient checkpointing, ...)."""

    def update(
        self, policy: DenoisingPolicy, optimizer: torch.optim.Optimizer, batch: EpochBatch
    ) -> dict[str, float]: ...


def run_update(
    spec: str,
    algorithm: Algorithm,
    policy: DenoisingPolicy,
    optimizer: torch.optim.Optimizer,
    batch: EpochBatch,
    plug_in: bool,
) -> dict[str, float]:
    """``algorithm.update`` on the epoch, and its statistics as floats. A plug-in's failure, a stray ``sys.exit``
    included (which would end training with exit 0 and nothing saved), is one line that names the plug-in; a
    built-in's is genrl's bug and keeps its traceback."""
    try:
        stats = algorithm.update(policy, optimizer, batch)
    except GenrlError:
        raise
    except (Exception, SystemExit) as exc:
        if not plug_in:
            raise
        raise GenrlError(f"algorithm '{spec}' update raised {describe(exc)}; fix the algorithm") from exc
    if not batch.rollouts:
        raise GenrlError(
            f"algorithm '{spec}' update sampled nothing, so there is no reward to log or learn from; call "
            "batch.sample(i) for the epoch's batches"
        )
    return _checked_stats(spec, stats)


def _checked_stats(spec: str, stats: Any) -> dict[str, float]:
    """The statistics an update returned, as floats; anything else is the algorithm's mistake, in one line."""
    if not isinstance(stats, dict):
        raise GenrlError(f"algorithm '{spec}' update returned {type(stats).__name__}; return a dict of floats")
    try:
        return {str(key): float(value) for key, value in stats.items()}
    except (TypeError, ValueError) as exc:
        raise GenrlError(f"algorithm '{spec}' update returned a non-number statistic ({exc}); return floats") from None
