"""What the policy-gradient algorithms share: sampling the epoch into a buffer, the global minibatches with their
weights, the optimizer step, the epoch's statistics, and the checks of the shared settings.

Accumulation semantics: an optimizer step follows every ``gradient_accumulation_steps`` minibatches of
``train_batch_size`` trajectories, and its gradient is the mean over all (trajectory, step) pairs they hold,
however many steps go into one forward pass. Where the minibatches of a pass do not divide evenly, the last
optimizer step of the pass takes the ones left over (its gradient is still their mean).

On N processes the minibatches are the global batch's (``TrajectoryBuffer.minibatches``): a global minibatch holds
``N x train_batch_size`` trajectories, each process computes the loss of its rows of it (none, possibly), weights
each chunk by its share of the optimizer step's global (trajectory, step) pairs, and the gradients are summed over
processes before clipping. So an optimizer step's gradient is the mean over its global pairs, as on one process,
and every process takes the same step. The logged statistics are pair-weighted means over the global batch
(gradient norm: per optimizer step), summed over processes before dividing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch

from genrl.advantages import informative_groups
from genrl.algos.base import EpochBatch
from genrl.algos.registry import settings_name
from genrl.buffer import Chunk, TrajectoryBuffer
from genrl.config_sampler import sampler_name
from genrl.errors import GenrlError
from genrl.precision import NO_SCALING, LossScaling
from genrl.steps import KLForm

# Reduces (sums or averages) the trainable parameters' gradients over processes in place (genrl.distributed)
GradientSync = Callable[[list[torch.nn.Parameter]], None]


class Collective(Protocol):
    """What the minibatch bookkeeping needs of the run's processes (``genrl.distributed.Processes``)."""

    count: int

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None: ...

    def sum_totals(self, totals: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]: ...


class OneProcess:
    """A run of one process: nothing to sum over."""

    count = 1


@dataclass
class MinibatchConfig:
    """The settings of the minibatch loop (``global_minibatches``) that PPO, REINFORCE and DiffusionNFT share."""

    train_batch_size: int = 8
    """Trajectories per minibatch (per process)."""
    gradient_accumulation_steps: int = 4
    """Minibatches per optimizer step."""
    steps_per_forward: int = 1
    """Denoising steps of each trajectory stacked into one UNet pass (the gradient is the same)."""
    adv_clip_max: float = 10.0
    """Advantages are clamped to [-adv_clip_max, adv_clip_max]."""
    max_grad_norm: float = 5.0
    """The gradient is clipped to this norm before each optimizer step."""


@dataclass
class PolicyGradientConfig(MinibatchConfig):
    """The settings that PPO and REINFORCE share: the minibatch loop's, the KL penalty, the trained steps."""

    kl_coef: float = 0.0
    """Penalty on the per-step KL to the frozen model (the LoRA switched off), in kl-form's form; logged as kl."""
    kl_form: KLForm = "closed"
    """closed: the true KL of the two Gaussian steps, in closed form, reduced over the latent as the log-prob.
    flow_grpo: Flow-GRPO's term, mean over the latent of (mean - mean_ref)^2 / (2 std_dev_t^2), whose std_dev_t is the
    SDE's noise scale g without the step's sqrt(|dt|): the closed form (averaged) times |dt| = sigma - sigma_next.
    flow_sde sampler only."""
    timestep_fraction: float = 1.0
    """Train on the first int(T x fraction) of each trajectory's T stochastic steps (at least one), the noisiest;
    the others are sampled but left out of the update and of the accumulation's pairs. Flow-GRPO's
    train.timestep_fraction: 0.99 trains steps 0-8 of 10, all but the last (to the data). DDPO's setting of that
    name (ddpo-pytorch) instead trains a random int(T x fraction) of each sample's steps, drawn anew each pass."""


def flag(run: Any, name: str) -> str:
    """The command-line flag of the run's algorithm's setting ``name``, for messages: ``--ppo.clip-range``."""
    return f"--{settings_name(run.algo)}.{name}".replace("_", "-")


def check_settings(config: Any, run: Any, positive: tuple[str, ...] = ()) -> None:
    """Finite numbers everywhere, ``positive`` ones above 0, a KL coefficient of 0 or more that has a reference."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise GenrlError(f"{flag(run, f.name)} must be a finite number, got {value}")
    for name in positive:
        if not getattr(config, name) > 0:
            raise GenrlError(f"{flag(run, name)} must be positive, got {getattr(config, name)}")
    kl_coef = getattr(config, "kl_coef", 0.0)
    if kl_coef < 0:
        raise GenrlError(f"{flag(run, 'kl_coef')} must be 0 or more, got {kl_coef}")
    if kl_coef > 0 and run.finetune != "lora":
        raise GenrlError(
            f"{flag(run, 'kl_coef')} needs --finetune lora: the reference is the model with its adapter off, and full "
            "fine-tuning keeps no frozen copy"
        )


def check_minibatches(config: MinibatchConfig, run: Any, positive: tuple[str, ...] = ()) -> None:
    """``check_settings`` with the minibatch loop's settings (and ``positive``) above 0 and minibatches that divide
    the epoch's samples."""
    loop = ("train_batch_size", "gradient_accumulation_steps", "steps_per_forward", "adv_clip_max", "max_grad_norm")
    check_settings(config, run, (*loop, *positive))
    if run.samples_per_epoch % config.train_batch_size:
        raise GenrlError(
            f"{flag(run, 'train_batch_size')} {config.train_batch_size} must divide the {run.samples_per_epoch} "
            "samples per epoch (--sample-batch-size x --batches-per-epoch)"
        )


def check_timestep_fraction(config: Any, run: Any) -> None:
    if not 0 < config.timestep_fraction <= 1:
        raise GenrlError(f"{flag(run, 'timestep_fraction')} must be in (0, 1], got {config.timestep_fraction}")


def check_policy_gradient(config: PolicyGradientConfig, run: Any) -> None:
    check_minibatches(config, run)
    check_timestep_fraction(config, run)
    if config.kl_form == "flow_grpo" and sampler_name(run) != "flow_sde":
        raise GenrlError(
            f"{flag(run, 'kl_form')} flow_grpo is Flow-GRPO's KL of the flow_sde sampler's step (its std_dev_t), and "
            f"this run samples with {sampler_name(run)}; use {flag(run, 'kl_form')} closed, or --env flow"
        )


def trained_steps(num_steps: int, fraction: float) -> int:
    """How many of a trajectory's ``num_steps`` stochastic steps ``timestep_fraction`` trains: int(T x fraction),
    as flow_grpo's num_train_timesteps, and at least one."""
    return max(1, int(num_steps * fraction))


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
    scaling: LossScaling = NO_SCALING,
) -> dict[str, float]:
    """Reduce over processes, unscale (fp16), clip, step, clear. Returns the step's statistics: ``grad_norm`` before
    clipping; with fp16's scaler also ``steps_skipped``, 1 where it skipped the step for an overflow (whose norm is
    not finite, and is left out)."""
    if reduce_gradients is not None:  # the scaled gradients: every process then finds the same overflow, or none
        reduce_gradients(params)
    scaling.unscale(optimizer)
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    taken = scaling.step(optimizer)
    optimizer.zero_grad(set_to_none=True)
    if scaling.scaler is None:
        return {"grad_norm": norm}
    return {"grad_norm": norm, "steps_skipped": 0.0} if taken else {"steps_skipped": 1.0}


def sample_epoch(batch: EpochBatch) -> tuple[TrajectoryBuffer, dict[str, float]]:
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
        spare = buffer.spare_chunk()  # the process's own rollouts, though it may keep none of them
        buffer = buffer.subset(kept)
        buffer.spare = spare
    return buffer, stats


@dataclass
class Minibatch:
    """This process's chunks of one global minibatch, and how each chunk's loss enters the optimizer step."""

    chunks: list[Chunk]
    """None where this process holds no row of the minibatch (it still takes the optimizer step)."""
    pairs_in_step: int
    """(trajectory, step) pairs of the optimizer step it belongs to, over all processes."""
    ends_step: bool
    """The optimizer step follows this minibatch."""
    sum_gradients: GradientSync | None
    """Sums the gradients over processes before the step (None: one process)."""
    scaling: LossScaling = NO_SCALING
    """fp16's loss scaling (``genrl.precision``)."""

    def backward(self, loss: torch.Tensor, chunk: Chunk) -> None:
        """Accumulate ``loss``'s gradient weighted by the chunk's share of the optimizer step's global pairs, so
        that neither chunking nor the split over processes changes the gradient (summed over processes: the mean
        over the step's global pairs)."""
        self.scaling.backward(loss * (len(chunk.sample_index) / self.pairs_in_step))


def global_minibatches(
    buffer: TrajectoryBuffer,
    config: MinibatchConfig,
    generator: torch.Generator,
    processes: Collective,
    pass_index: int = 0,
    scaling: LossScaling = NO_SCALING,
) -> Iterator[Minibatch]:
    """One shuffled pass over the buffer in global minibatches (``TrajectoryBuffer.minibatches``), grouped into
    optimizer steps of ``gradient_accumulation_steps``; every process calls this with the same generator state."""
    batch_size = config.train_batch_size * processes.count  # a global minibatch
    sizes = buffer.minibatch_sizes(batch_size)
    accumulation = config.gradient_accumulation_steps
    sum_gradients = processes.sum_gradients if processes.count > 1 else None
    for i, chunks in enumerate(buffer.minibatches(batch_size, config.steps_per_forward, generator)):
        step_start = i - i % accumulation
        step_end = min(step_start + accumulation, len(sizes))
        for chunk in chunks:
            chunk.minibatch += pass_index * len(sizes)  # counted on across passes
        pairs = sum(sizes[step_start:step_end]) * buffer.num_steps
        yield Minibatch(chunks, pairs, i + 1 == step_end, sum_gradients, scaling)


def train_minibatches(
    buffer: TrajectoryBuffer,
    config: MinibatchConfig,
    policy: Any,
    optimizer: torch.optim.Optimizer,
    chunk_loss: Callable[[Chunk], tuple[torch.Tensor, dict[str, float]]],
    generator: torch.Generator,
    processes: Collective,
    scaling: LossScaling = NO_SCALING,
    passes: int = 1,
) -> tuple[dict[str, float], int]:
    """``passes`` shuffled passes over the buffer in global minibatches: each chunk's ``chunk_loss`` backpropagated
    with its weight, an optimizer step where a step ends. Returns the pair-weighted means of the statistics (with
    ``loss``; over all processes) and the optimizer steps taken (fp16's skipped ones left out)."""
    params = policy.trainable_parameters()
    means, taken = EpochMeans(), 0
    in_step = getattr(processes, "sharded", False)  # --fsdp: every process runs as many passes (genrl/sharding.py)
    spare = (buffer.spare or buffer.spare_chunk()) if in_step else None
    policy.train()
    for pass_index in range(passes):
        for minibatch in global_minibatches(buffer, config, generator, processes, pass_index, scaling):
            fillers = processes.most(len(minibatch.chunks)) - len(minibatch.chunks) if in_step else 0
            for chunk in minibatch.chunks:
                loss, stats = chunk_loss(chunk)
                minibatch.backward(loss, chunk)
                means.add({"loss": loss.item(), **stats}, weight=len(chunk.sample_index))
            for _ in range(fillers):  # in step with the others' passes, which gather and free the sharded weights
                loss, _ = chunk_loss(spare)
                scaling.backward(loss * 0.0)
            if minibatch.ends_step:  # on every process, with or without rows in the step's minibatches
                step = optimizer_step(params, optimizer, config.max_grad_norm, minibatch.sum_gradients, scaling)
                means.add(step)
                taken += not step.get("steps_skipped", 0.0)
    policy.eval()
    return means.means(processes), taken
