"""``python -m genrl.train``: the training run (build, epochs, evaluations, checkpoints) of the configuration that
genrl/cli.py reads from the command line, and ``main``, which turns the errors a user can fix into one line.

Usage: ``python -m genrl.train --help`` (its examples: genrl/cli.py ``USAGE``).
"""

from __future__ import annotations

import os

# Library chatter (optional-backend notices, loading bars) would bury the run's own output.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import copy
import errno
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from genrl.advantages import PerPromptStatTracker, compute_advantages
from genrl.algos.base import Algorithm, EpochBatch, run_update
from genrl.algos.registry import is_builtin
from genrl.assemble import assemble, derived_seed
from genrl.best import BestEvaluation
from genrl.checkpoint import (
    BEST,
    checkpoint_name,
    ema_weights,
    is_complete,
    latest_checkpoint,
    load_checkpoint,
    point_link,
    save_checkpoint,
)
from genrl.cli import parse_config
from genrl.config import TrainConfig, replace_config
from genrl.config_file import check_fixed_configuration, config_to_json, fixed_configuration
from genrl.config_sampler import sampler_options
from genrl.cpu import SpinThrottle, default_threads
from genrl.denoiser import denoiser
from genrl.distributed import Processes
from genrl.envs import DenoisingEnv, make_env
from genrl.envs.actions import NonFiniteAction
from genrl.errors import GenrlError
from genrl.policy import DenoisingPolicy
from genrl.precision import NO_SCALING, LossScaling
from genrl.prompts import load_prompts, metadata_by_prompt
from genrl.rewards.base import CheckedReward
from genrl.rewards.shapes import is_shapes_prompt, shapes_alignment
from genrl.rollout import Rollout, SamplingBatch, collect
from genrl.rundir import RunDir
from genrl.sharding import shard_frozen_weights

_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES)
"""Why a write fails on a disk that is full, over quota, read-only or not the user's."""


# --------------------------------------------------------------------------------------------------
# The run: everything built once, from the configuration
# --------------------------------------------------------------------------------------------------
@dataclass
class Training:
    cfg: TrainConfig
    processes: Processes
    prompt_pool: list[str]
    pipe: object
    env: DenoisingEnv
    policy: DenoisingPolicy
    algorithm: Algorithm
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_scaling: LossScaling = NO_SCALING
    tracker: PerPromptStatTracker | None = None
    ema: EMAModel | None = None
    background_reward: tuple[CheckedReward, ThreadPoolExecutor] | None = None
    eval_batches: list[SamplingBatch] = field(default_factory=list)
    prompt_metadata: dict[str, dict[str, Any]] | None = None
    """Each training prompt's metadata for the reward (a .jsonl prompt set's records); None: every prompt's is empty."""
    eval_env: DenoisingEnv | None = None  # where --eval-num-steps differs from --num-steps, or with --eval-ode
    counters: dict = field(default_factory=lambda: {"epoch": 0, "reward_queries": 0, "wall_time_s": 0.0})


def build(cfg: TrainConfig) -> Training:
    """Prompts, reward, algorithm, model, env, policy, optimizer: every check that can fail, before any run."""
    prompt_pool = load_prompts(cfg.prompts)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("true", "1"):  # accelerate launch --use_fsdp
        raise GenrlError(
            "accelerate's --use_fsdp wraps models handed to accelerator.prepare, which genrl does not do, so nothing "
            "would be sharded; launch without it and give genrl --fsdp (FSDP2 of the frozen weights under LoRA)"
        )
    processes = Processes(cfg.device, cfg.process_timeout_s)
    if cfg.fsdp and processes.count == 1:
        raise GenrlError(
            "--fsdp shards the weights over the run's processes, and this run has one: launch several with "
            "python -m genrl.launch --num-processes N (or accelerate launch), or drop --fsdp"
        )
    _set_up_precision(cfg, processes.device)
    parts = assemble(cfg, processes.device, score_in_env=not cfg.async_rewards)
    pipe, env, policy, algorithm = parts.pipeline, parts.env, parts.policy, parts.algorithm
    if cfg.fsdp:
        held, frozen = shard_frozen_weights(denoiser(pipe), policy.trainable_parameters(), processes.device)
        processes.sharded = True
        if processes.is_main:
            print(f"--fsdp: this process holds {held:,} of the denoiser's {frozen:,} frozen weights", file=sys.stderr)
    background = None
    if cfg.async_rewards:  # one intra-op thread for the reward: two OpenMP teams on the same cores stall each other
        executor = ThreadPoolExecutor(1, "reward", initializer=torch.set_num_threads, initargs=(1,))
        background = (parts.reward, executor)
    optimizer = torch.optim.AdamW(
        policy.trainable_parameters(),
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
        fused=torch.device(processes.device).type in ("cpu", "cuda"),  # one kernel for all tensors: 4x faster on CPU
    )
    training = Training(
        cfg,
        processes,
        prompt_pool,
        pipe,
        env,
        policy,
        algorithm,
        optimizer,
        get_scheduler(cfg.lr_schedule, optimizer, num_warmup_steps=0, num_training_steps=cfg.epochs),
        loss_scaling=LossScaling(cfg.mixed_precision, processes.device),
        background_reward=background,
        prompt_metadata=metadata_by_prompt(cfg.prompts),
    )
    if cfg.eval_every > 0:
        eval_prompts = cfg.eval_prompts or cfg.prompts
        training.eval_batches = _evaluation_set(cfg, load_prompts(eval_prompts), metadata_by_prompt(eval_prompts))
        if cfg.eval_num_steps not in (None, cfg.num_steps) or cfg.eval_ode:
            training.eval_env = _evaluation_env(cfg, pipe, parts.reward)
    if cfg.advantages == "per_prompt" and cfg.group_size == 1:  # groups bring their own statistics
        training.tracker = PerPromptStatTracker(cfg.stat_buffer_size, cfg.stat_min_count)
    if cfg.ema_decay > 0:
        training.ema = EMAModel(policy.trainable_parameters(), decay=cfg.ema_decay)
        optimizer.register_step_post_hook(lambda *_: training.ema.step(policy.trainable_parameters()))
    return training


def _set_up_precision(cfg: TrainConfig, device: str) -> None:
    """TF32 on CUDA as asked; a half dtype the device cannot compute in is refused before anything loads."""
    if torch.device(device).type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.allow_tf32
    if cfg.mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise GenrlError("--mixed-precision bf16 needs a GPU with bfloat16 (Ampere or newer); use fp16 on this one")


def resume(t: Training, checkpoint: Path) -> None:
    state = load_checkpoint(checkpoint, denoiser(t.pipe), t.optimizer, t.lr_scheduler, t.ema, t.algorithm)
    saved_by = state.get("num_processes", 1)
    if saved_by != t.processes.count:
        raise GenrlError(
            f"--resume {t.cfg.resume}: the run was trained on {saved_by} processes, this launch has "
            f"{t.processes.count}; resume with --num-processes {saved_by}"
        )
    check_fixed_configuration(t.cfg, state.get("configuration"))
    t.counters = state["counters"]
    t.loss_scaling.load_state_dict(state.get("loss_scaling") or {})  # fp16's scale; another precision has none
    if t.tracker is not None and state.get("tracker"):
        t.tracker.load_state_dict(state["tracker"])


# --------------------------------------------------------------------------------------------------
# One epoch: this process's sampling batches, the algorithm's update, the metrics
# --------------------------------------------------------------------------------------------------
def _global_prompts(cfg: TrainConfig, prompt_pool: list[str], epoch: int, batch: int, processes: int) -> list[str]:
    """The prompts of sampling batch ``batch`` over all processes, in runs of ``group_size``."""
    rng = np.random.default_rng(derived_seed(cfg.seed, epoch, batch, 0))
    picks = rng.integers(len(prompt_pool), size=cfg.sample_batch_size * processes // cfg.group_size)
    return [prompt_pool[i] for i in picks for _ in range(cfg.group_size)]


def _sampling_batches(
    cfg: TrainConfig,
    prompt_pool: list[str],
    epoch: int,
    processes: Processes,
    metadata: dict[str, dict[str, Any]] | None = None,
) -> list:
    """This process's share of the epoch's sampling batches, with each prompt's ``metadata`` where there is some."""
    rows = processes.noise_slice(cfg.sample_batch_size)
    batches = []
    for b in range(cfg.batches_per_epoch):
        prompts = _global_prompts(cfg, prompt_pool, epoch, b, processes.count)
        prompts = prompts[rows.offset : rows.offset + cfg.sample_batch_size]
        seeds = derived_seed(cfg.seed, epoch, b, 1), derived_seed(cfg.seed, epoch, b, 2)
        batches.append(SamplingBatch(prompts, *seeds, rows, _metadata_of(prompts, metadata)))
    return batches


def _metadata_of(prompts: list[str], metadata: dict[str, dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Each prompt's metadata, a copy per image: a reward may write into its own (ocr keeps what it read)."""
    return None if metadata is None else [copy.deepcopy(metadata.get(p.strip(), {})) for p in prompts]


def _collect(
    t: Training,
    batch: SamplingBatch,
    epoch: int,
    shared_noise: int = 1,
    grad_steps: int = 0,
    env: DenoisingEnv | None = None,
    keep_means: bool = False,
) -> Rollout:
    """``collect`` with the run's env (or ``env``), policy and reward; samples gone NaN are the run's divergence, in
    one line."""
    try:
        return collect(env or t.env, t.policy, batch, shared_noise, grad_steps, t.background_reward, keep_means)
    except NonFiniteAction:  # weights still finite, but too large for the UNet's range (fp16's, say)
        raise _diverged(epoch, "samples", t.cfg) from None


def _sampler(t: Training, epoch: int):
    shared_noise = t.cfg.group_size if t.cfg.group_shared_noise else 1
    keep_means = bool(getattr(t.algorithm, "needs_step_means", False))  # each step's mean, kept only where asked

    def sample(batch: SamplingBatch, grad_steps: int = 0) -> Rollout:
        return _collect(t, batch, epoch, shared_noise, grad_steps, keep_means=keep_means)

    return sample


def epoch_batch(t: Training, epoch: int) -> EpochBatch:
    cfg, count = t.cfg, t.processes.count
    global_prompts = [
        p for b in range(cfg.batches_per_epoch) for p in _global_prompts(cfg, t.prompt_pool, epoch, b, count)
    ]

    def advantages_of(rewards: torch.Tensor) -> torch.Tensor:
        prompts = global_prompts[: len(rewards)]
        return compute_advantages(prompts, rewards, t.tracker, cfg.group_size, cfg.group_std, cfg.global_std)

    return EpochBatch(
        batches=_sampling_batches(cfg, t.prompt_pool, epoch, t.processes, t.prompt_metadata),
        sampler=_sampler(t, epoch),
        advantages_of=advantages_of,
        processes=t.processes,
        generator=torch.Generator().manual_seed(derived_seed(cfg.seed, epoch, 0, 3)),
        group_size=cfg.group_size,
        loss_scaling=t.loss_scaling,
    )


def run_epoch(t: Training, epoch: int) -> tuple[list[Rollout], dict]:
    """Samples and trains one epoch; returns its rollouts and its metrics (training wall-clock not yet in)."""
    start = time.perf_counter()
    batch = epoch_batch(t, epoch)
    lr = t.lr_scheduler.get_last_lr()[0]
    update = run_update(t.cfg.algo, t.algorithm, t.policy, t.optimizer, batch, plug_in=not is_builtin(t.cfg.algo))
    stats = t.processes.mean(update)
    rewards = batch.global_rewards()
    elapsed = time.perf_counter() - start
    _check_finite(epoch, stats, t.policy, t.cfg, t.loss_scaling)
    t.lr_scheduler.step()
    rollouts = batch.rollouts
    t.counters["reward_queries"] += len(rewards)
    metrics = {
        "epoch": epoch,
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std(unbiased=False).item(),
        "reward_queries": t.counters["reward_queries"],
        "wall_time_s": None,  # set by the loop, which counts logging and checkpoints too
        "sample_time_s": sum(r.sample_time_s for r in rollouts),
        "reward_time_s": sum(r.reward_time_s for r in rollouts),
        "reward_wait_s": sum(r.reward_wait_s for r in rollouts),
        "train_time_s": elapsed - sum(r.sample_time_s + r.blocked_s for r in rollouts),
        "lr": lr,
        **stats,
    }
    parts: dict[str, list[torch.Tensor]] = {}
    for rollout in rollouts:
        for name, values in rollout.reward_parts.items():
            parts.setdefault(name, []).append(t.processes.gather(values.detach()).cpu())
    if parts:
        metrics["reward_parts"] = {name: torch.cat(v).mean().item() for name, v in parts.items()}
    return rollouts, metrics


def _check_finite(
    epoch: int, stats: dict[str, float], policy: DenoisingPolicy, cfg: TrainConfig, scaling: LossScaling
) -> None:
    """Stop a diverged run before its epoch is logged or saved. NaN weights decode to black images, which a
    JPEG-size reward scores best: left alone, the reward would seem to improve. With fp16, an overflow that the
    loss scaler caught (its step skipped, ``steps_skipped``) makes the loss non-finite without harm: the weights
    tell then, and a scale that every step has driven below 1 (the model overflows whatever the scale)."""
    judged = () if stats.get("steps_skipped", 0) > 0 else ("loss", "grad_norm")
    bad = next((key for key in judged if key in stats and not math.isfinite(stats[key])), None)
    if bad is None and not all(torch.isfinite(p).all() for p in policy.trainable_parameters()):
        bad = "weights"
    if bad is None and stats.get("steps_skipped") == 1 and scaling.scale() < 1:
        raise GenrlError(
            f"epoch {epoch}: every optimizer step overflowed in fp16 (the loss scale fell to {scaling.scale():.3g}), "
            f"so training diverged or fp16's range is too small for this model; lower --learning-rate "
            f"{cfg.learning_rate:g} or use --mixed-precision bf16 (nothing of this epoch was saved)"
        )
    if bad is not None:
        raise _diverged(epoch, bad.replace("_", " "), cfg)


def _diverged(epoch: int, what: str, cfg: TrainConfig) -> GenrlError:
    return GenrlError(
        f"epoch {epoch}: the {what} became NaN or infinite, so training diverged, most likely because "
        f"--learning-rate {cfg.learning_rate:g} is too high; lower it and start again (nothing of this epoch was saved)"
    )


# --------------------------------------------------------------------------------------------------
# Evaluation: a fixed set of prompts and noise, the same in every run, so that curves compare across runs
# --------------------------------------------------------------------------------------------------
_EVAL_SEED = 20261123  # not --seed: every run, of any method or seed, is judged on the same images' noise


def _evaluation_set(
    cfg: TrainConfig, pool: list[str], metadata: dict[str, dict[str, Any]] | None = None
) -> list[SamplingBatch]:
    rng = np.random.default_rng(derived_seed(_EVAL_SEED, 0))
    prompts = [pool[i] for i in rng.choice(len(pool), size=cfg.eval_size, replace=len(pool) < cfg.eval_size)]
    size = cfg.sample_batch_size
    return [
        SamplingBatch(
            prompts[start : start + size],
            derived_seed(_EVAL_SEED, start, 1),
            derived_seed(_EVAL_SEED, start, 2),
            metadata=_metadata_of(prompts[start : start + size], metadata),
        )
        for start in range(0, cfg.eval_size, size)
    ]


def _evaluation_env(cfg: TrainConfig, pipe: object, reward: CheckedReward) -> DenoisingEnv:
    """The env the evaluation set is sampled in at ``--eval-num-steps``: the training env's, with other steps; with
    ``--eval-ode`` every step deterministic (a flow sampler's step at noise 0 is the ODE's Euler step)."""
    try:
        env = make_env(
            cfg.env,
            cfg.sample_batch_size,
            pipe,
            None if cfg.async_rewards else reward,
            cfg.eval_num_steps or cfg.num_steps,
            cfg.resolution,
            **sampler_options(cfg),
        )
    except ValueError as exc:
        raise GenrlError(f"--eval-num-steps {cfg.eval_num_steps or cfg.num_steps}: {exc}") from None
    if cfg.eval_ode:
        env.stochastic = [False] * env.num_steps
    return env


def _evaluation_due(cfg: TrainConfig, epoch: int, last: bool) -> bool:
    return cfg.eval_every > 0 and (last or epoch % cfg.eval_every == 0)


def evaluate(t: Training) -> tuple[dict[str, float], Rollout]:
    """The current policy on the evaluation set: its metrics, and its first batch (for the sample grid)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    weights = ema_weights(t.ema, t.policy.trainable_parameters()) if t.cfg.eval_ema else nullcontext()
    with weights:
        rollouts = [_collect(t, batch, t.counters["epoch"], env=t.eval_env) for batch in t.eval_batches]
    rewards = torch.cat([r.resolve().rewards for r in rollouts])
    metrics = {"eval_reward_mean": rewards.mean().item(), "eval_reward_std": rewards.std(unbiased=False).item()}
    if rollouts[0].reward_parts:  # a composite reward's parts: the task's own reward among them
        parts = {name: torch.cat([r.reward_parts[name] for r in rollouts]) for name in rollouts[0].reward_parts}
        metrics["eval_reward_parts"] = {name: values.mean().item() for name, values in parts.items()}
    prompts = [p for r in rollouts for p in r.prompts]
    if all(is_shapes_prompt(p) for p in prompts):
        images = torch.cat([r.images for r in rollouts])
        metrics["eval_prompt_accuracy"] = shapes_alignment.accuracy(images, prompts)
    metrics["eval_time_s"] = time.perf_counter() - start
    metrics["eval_cpu_time_s"] = time.process_time() - cpu_start
    return metrics, rollouts[0]


def starting_evaluation(t: Training) -> tuple[dict[str, float], Rollout]:
    """Epoch 0: the model before any update, every method's own start (one Adam step already moves it); its
    metrics record and the evaluation set's first batch."""
    evaluation, shown = evaluate(t)
    return {"epoch": 0, "reward_queries": 0, "wall_time_s": 0.0, "cpu_time_s": 0.0, **evaluation}, shown


def _log_starting_evaluation(t: Training, run: RunDir) -> dict:
    record, shown = starting_evaluation(t)
    run.log_metrics(record)
    run.save_samples(0, shown.images, shown.prompts, shown.rewards, suffix="-eval")
    return record


# --------------------------------------------------------------------------------------------------
# The run directory: claimed, logged to, saved to (the main process only writes)
# --------------------------------------------------------------------------------------------------
def _claim_run_dir(cfg: TrainConfig, processes: Processes) -> tuple[RunDir, Path | None]:
    """The run directory, locked by the main process against a second run, and the checkpoint to resume from
    (None: from scratch, also on --resume of a run stopped before its first checkpoint)."""
    if cfg.resume is not None:
        run = RunDir(cfg.resume, cfg.log_with)
    else:  # the main process names the run: the time differs between processes
        run = RunDir(
            cfg.output_dir / processes.broadcast(cfg.run_name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"),
            cfg.log_with,
        )
    problem = None
    if processes.is_main:
        try:
            run.lock()
            if cfg.resume is None and run.holds_progress():
                raise GenrlError(
                    f"run directory {run.path} already holds a run; pick another --run-name or --resume it"
                )
        except GenrlError as exc:
            run.close()
            problem = exc
    problem = processes.broadcast(problem)  # every process stops, not only the main one
    if problem:
        # Its own type (RunDirInUse: a sweep's second process skips the run), without the main process's traceback.
        raise type(problem)(str(problem))
    checkpoint = latest_checkpoint(run.checkpoints) if cfg.resume is not None else None
    if cfg.resume is not None and checkpoint is None and processes.is_main:
        print(f"{run.path} has no checkpoint yet: the run starts again from epoch 1", file=sys.stderr)
    return run, checkpoint


def log_epoch(t: Training, run: RunDir, rollouts: list[Rollout], metrics: dict, images: bool) -> None:
    epoch = metrics["epoch"]
    if images and t.ema is not None:
        evaluation = _sample_with_ema(t, epoch)
        metrics["ema_reward_mean"] = evaluation.rewards.mean().item()
        run.save_samples(epoch, evaluation.images, evaluation.prompts, evaluation.rewards, suffix="-ema")
    run.log_metrics(metrics)
    if images:
        first = rollouts[0]
        run.save_samples(epoch, first.images, first.prompts, first.rewards)


def _sample_with_ema(t: Training, epoch: int) -> Rollout:
    """The evaluation batch (the same prompts and noise at every epoch) sampled with the EMA weights."""
    batch = _sampling_batches(t.cfg, t.prompt_pool, 0, t.processes, t.prompt_metadata)[0]  # training starts at epoch 1
    with ema_weights(t.ema, t.policy.trainable_parameters()):
        return _sampler(t, epoch)(batch).resolve()


def save(t: Training, run: RunDir, epoch: int, best: BestEvaluation) -> None:
    """The checkpoint of ``epoch``; with --keep-best, ``checkpoints/best`` is kept and pointed at the best one."""
    state = {
        "counters": t.counters,
        "tracker": t.tracker.state_dict() if t.tracker is not None else None,
        "num_processes": t.processes.count,
        "configuration": fixed_configuration(t.cfg),
        "loss_scaling": t.loss_scaling.state_dict(),  # empty but with fp16
    }
    kept = run.checkpoints / checkpoint_name(best.epoch) if t.cfg.keep_best and best.epoch is not None else None
    save_checkpoint(
        run.checkpoints,
        epoch,
        t.policy.adapter,
        t.optimizer,
        t.lr_scheduler,
        state,
        t.cfg.keep_checkpoints,
        t.ema,
        kept,
        t.algorithm.state_dict() if hasattr(t.algorithm, "state_dict") else None,
    )
    if kept is not None and best.epoch == epoch:
        _point_best_at(run, epoch)


def _point_best_at(run: RunDir, epoch: int) -> None:
    folder = run.checkpoints / checkpoint_name(epoch)
    if is_complete(folder):  # absent where --keep-best was added on a --resume after that epoch
        point_link(folder, BEST)


# --------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> RunDir:
    """The run ``cfg`` describes; torch's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    try:
        with SpinThrottle():  # short spins at torch's barriers while other work shares the cores (genrl/cpu.py)
            return _train(cfg)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig) -> RunDir:
    t = build(cfg)
    if torch.device(t.processes.device).type == "cpu":
        # Never from the load (genrl/cpu.py): the main process's count for all, recorded in config.json, so that a
        # rerun or a resume computes as the run started.
        if cfg.threads is None:
            chosen = default_threads() if t.processes.is_main else None
            cfg = t.cfg = replace_config(cfg, threads=t.processes.broadcast(chosen))
        torch.set_num_threads(cfg.threads)
    run, checkpoint = _claim_run_dir(cfg, t.processes)
    main_process = t.processes.is_main
    best = BestEvaluation(cfg.accuracy_floor)  # the main process's, which evaluates
    with run:  # released however the run ends
        if checkpoint is not None:
            resume(t, checkpoint)
        first = t.counters["epoch"] + 1
        if main_process:
            run.keep_metrics_before(first)  # the epochs after the checkpoint will run again
            run.create(config_to_json(cfg))
            print(f"run directory: {run.path}", flush=True)
            best = BestEvaluation.replay(cfg.accuracy_floor, run.read_metrics())
        starting = first == 1 and cfg.eval_every > 0 and main_process and not run.read_metrics()
        if t.processes.sharded and t.processes.broadcast(starting) and not main_process:
            starting_evaluation(t)  # its passes are collectives (genrl/sharding.py); the main process logs it
        if main_process:
            if starting:
                if best.observe(_log_starting_evaluation(t, run)) and cfg.keep_best:
                    save(t, run, 0, best)  # the untrained model is a candidate too
            elif cfg.keep_best and best.epoch is not None:
                _point_best_at(run, best.epoch)  # a stop may have come between saving it and linking it
        bar = tqdm(
            range(first, cfg.epochs + 1),
            "epochs",
            initial=first - 1,
            total=cfg.epochs,
            disable=not main_process or None,
        )
        # Wall-clock counts everything from here on, logging and checkpoints included, across resumed segments;
        # process CPU time beside it shows whether other work competed for the cores.
        segment_start, wall_before = time.perf_counter(), t.counters["wall_time_s"]
        cpu_start, cpu_before = time.process_time(), t.counters.get("cpu_time_s", 0.0)  # older runs: absent
        for epoch in bar:
            rollouts, metrics = run_epoch(t, epoch)
            t.counters["epoch"] = epoch
            t.counters["wall_time_s"] = metrics["wall_time_s"] = wall_before + time.perf_counter() - segment_start
            t.counters["cpu_time_s"] = metrics["cpu_time_s"] = cpu_before + time.process_time() - cpu_start
            # The main process's clock decides, so that every process stops after the same epoch.
            out_of_time = t.processes.broadcast(
                cfg.time_budget_s is not None and t.counters["wall_time_s"] >= cfg.time_budget_s
            )
            stopping = new_best = False
            # The main process evaluates; under --fsdp every process samples too (genrl/sharding.py).
            evaluating = main_process or t.processes.sharded
            if evaluating and _evaluation_due(cfg, epoch, epoch == cfg.epochs or out_of_time):
                evaluation, shown = evaluate(t)
                segment_start += evaluation["eval_time_s"]  # not training time
                cpu_start += evaluation["eval_cpu_time_s"]
                if main_process:
                    metrics.update(evaluation)
                    run.save_samples(epoch, shown.images, shown.prompts, shown.rewards, suffix="-eval")
                    new_best = best.observe(metrics)
                    stopping = 0 < cfg.early_stop_patience <= best.since_best
            if t.processes.sharded:
                stopping = t.processes.broadcast(stopping)  # it decides whether the EMA grid is sampled
            images = epoch in (1, cfg.epochs) or epoch % cfg.log_images_every == 0 or out_of_time or stopping
            if t.processes.sharded and images and t.ema is not None and not main_process:
                _sample_with_ema(t, epoch)  # the main process's log_epoch samples it in step with this
            if main_process:
                log_epoch(t, run, rollouts, metrics, images)
                due = epoch % cfg.save_every == 0 or epoch == cfg.epochs or out_of_time or stopping
                if due or (cfg.keep_best and new_best):
                    save(t, run, epoch, best)
                if stopping:
                    bar.write(
                        f"early stop after epoch {epoch}: no better evaluation in {best.since_best} (best: "
                        f"{best.describe()})"
                    )
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", loss=f"{metrics.get('loss', float('nan')):.2e}")
            if out_of_time or t.processes.broadcast(stopping):
                break
        bar.close()
    if t.background_reward is not None:
        t.background_reward[1].shutdown()
    t.processes.wait()  # the last checkpoint is complete before any process leaves
    if main_process:
        history = run.read_metrics()
        for key in ("reward_mean", "eval_reward_mean", "eval_prompt_accuracy"):  # first and last epoch that has it
            logged = [m for m in history if key in m]
            if logged:
                first, last = logged[0], logged[-1]
                print(f"{key}: epoch {first['epoch']}: {first[key]:.4f} -> epoch {last['epoch']}: {last[key]:.4f}")
        if cfg.keep_best and (run.checkpoints / BEST).exists():
            print(f"best: {best.describe()}  (LoRA: {run.checkpoints / BEST})")
        print(f"run directory: {run.path}  (LoRA: {run.checkpoints / 'latest'})")
    return run


def main(argv: list[str] | None = None) -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    try:
        train(parse_config(argv))
    except GenrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (torch.distributed.DistError, RuntimeError) as exc:
        started = torch.distributed.is_available() and torch.distributed.is_initialized()
        # A process group that could not form (a process that never joined its store within --process-timeout-s,
        # or one too slow to start on a loaded machine) is the same stop, before the group exists.
        forming = isinstance(exc, torch.distributed.DistError) and int(os.environ.get("WORLD_SIZE", "1")) > 1
        if not (started or forming):
            raise
        # Another process died (gloo: "connection closed by peer") or hung past --process-timeout-s: stop too.
        # gloo raises a plain RuntimeError; one that is not about the communication (out of memory, a bug) is this
        # process's own failure, and keeps its traceback.
        text = str(exc)
        if not isinstance(exc, torch.distributed.DistError) and not any(
            word in text.lower() for word in ("gloo", "nccl", "processgroup", "connection", "timed out", "timeout")
        ):
            raise
        # The reason's first sentence, without gloo's "[path/to/source.cc:123] " in front.
        reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if reason.startswith("[") and "] " in reason:
            reason = reason.split("] ", 1)[1]
        reason = reason.split(". ")[0]
        print(
            f"error: another process of this run stopped or stalled ({reason[:200]}); see its output above, fix it, "
            "and continue with --resume RUN_DIR (the latest complete checkpoint is kept)",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    except OSError as exc:
        if exc.errno not in _WRITE_ERRORS:
            raise
        # A full or read-only disk: what was written before stays (every file is replaced atomically).
        print(
            f"error: cannot write {exc.filename or 'the run directory'} ({exc.strerror}); free disk space or pick "
            "another --output-dir, then continue with --resume RUN_DIR (the latest complete checkpoint is kept)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted; the latest complete checkpoint is kept: continue with --resume RUN_DIR", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
