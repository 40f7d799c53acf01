"""The algorithm interface: what ``genrl.train`` calls once an epoch, and what it hands over.

An algorithm is a class with a typed ``Config`` dataclass (its hyperparameters; each field is filled from the
``TrainConfig`` field of the same name) and one method:

    update(policy, optimizer, batch: EpochBatch) -> dict[str, float]     # the epoch's training statistics

``batch.sample(i)`` samples the epoch's i-th batch (``grad_steps=K`` keeps a graph over its last K steps), so an
algorithm decides how and when it samples: PPO samples everything and then trains, DPG backpropagates each batch
as it is scored. ``batch.advantages()`` gives the advantages of this process's rows of the global batch. Set
``differentiable_reward = True`` on the class where the reward's gradient is needed.

Built-in: ``ppo``, ``reinforce``, ``dpg``. Others plug in as ``--algo package.module:Class`` or through the entry
point group ``genrl.algorithms``, as rewards do.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

import torch

from genrl.errors import GenrlError
from genrl.plugins import describe, import_object, load_entry_point
from genrl.policy import DenoisingPolicy
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
    def update(
        self, policy: DenoisingPolicy, optimizer: torch.optim.Optimizer, batch: EpochBatch
    ) -> dict[str, float]: ...


def build_config(config_type: type, train_config: Any) -> Any:
    """``config_type``'s fields, taken from the ``TrainConfig`` fields of the same name (others: their default)."""
    names = [f.name for f in dataclasses.fields(config_type)]
    return config_type(**{name: getattr(train_config, name) for name in names if hasattr(train_config, name)})


def builtin_algorithms() -> dict[str, type]:
    from genrl.algos.dpg import DPG
    from genrl.algos.ppo import PPO
    from genrl.algos.reinforce import REINFORCE

    return {"ppo": PPO, "reinforce": REINFORCE, "dpg": DPG}


def algorithm_class(spec: str) -> type:
    """A built-in name, an entry point of ``genrl.algorithms``, or ``package.module:Class``."""
    builtin = builtin_algorithms()
    plugins = {ep.name: ep for ep in entry_points(group="genrl.algorithms")}
    if spec in builtin:
        cls = builtin[spec]
    elif spec in plugins:
        cls = load_entry_point(plugins[spec], "algorithm")
    elif ":" in spec:
        cls = import_object(spec, "algorithm")
    else:
        names = ", ".join([*builtin, *plugins])
        raise GenrlError(f"unknown algorithm '{spec}'; use one of {names} or 'package.module:Class'")
    update = getattr(cls, "update", None)
    if not inspect.isclass(cls) or not callable(update):
        raise GenrlError(
            f"algorithm '{spec}' is not a class with an update(policy, optimizer, batch) method; see the README's "
            "'Write your own algorithm'"
        )
    config = getattr(cls, "Config", None)
    if config is not None and not dataclasses.is_dataclass(config):
        raise GenrlError(f"algorithm '{spec}': its Config must be a dataclass of hyperparameters")
    return cls


def make_algorithm(spec: str, train_config: Any) -> Algorithm:
    cls = algorithm_class(spec)
    config = getattr(cls, "Config", None)
    try:
        return cls(build_config(config, train_config)) if config is not None else cls()
    except GenrlError:
        raise
    except TypeError as exc:
        raise GenrlError(f"algorithm '{spec}' could not be built ({exc}); its __init__ takes its Config") from exc
    except (Exception, SystemExit) as exc:
        raise GenrlError(f"algorithm '{spec}' could not be built: it raised {describe(exc)}; fix it") from exc


def run_update(
    spec: str, algorithm: Algorithm, policy: DenoisingPolicy, optimizer: torch.optim.Optimizer, batch: EpochBatch
) -> dict[str, float]:
    """``algorithm.update`` on the epoch, and its statistics as floats. A plug-in's failure, a stray ``sys.exit``
    included (which would end training with exit 0 and nothing saved), is one line that names the plug-in; a
    built-in's is genrl's bug and keeps its traceback."""
    try:
        stats = algorithm.update(policy, optimizer, batch)
    except GenrlError:
        raise
    except (Exception, SystemExit) as exc:
        if spec in builtin_algorithms():
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
