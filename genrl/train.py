"""``python -m genrl.train``: fine-tune an LCM (RLCM) or a diffusion model (DDPO) against a reward.

python -m genrl.train                                  # the default preset, a few minutes on a CPU
python -m genrl.train --preset rlcm-compression        # the paper's hyperparameters
python -m genrl.train --resume runs/NAME --epochs 20   # continue a run exactly
"""

from __future__ import annotations

import os

# Library chatter (optional-backend notices, loading bars) would bury the run's own output.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path

import numpy as np
import torch
import tyro
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from genrl.advantages import PerPromptStatTracker, compute_advantages, informative_groups
from genrl.algos import BUFFER_ALGORITHMS, dpg
from genrl.buffer import TrajectoryBuffer
from genrl.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from genrl.config import DEFAULT_PRESET, TrainConfig, config_to_json, preset, read_config
from genrl.distributed import Processes
from genrl.envs import DDPMEnv, LCMEnv
from genrl.errors import GenrlError
from genrl.models import load_pipeline
from genrl.policy import add_lora, make_policy
from genrl.prompts import load_prompts
from genrl.rewards import load_reward
from genrl.rollout import Rollout, SamplingBatch, collect
from genrl.rundir import RunDir

# Fields a resumed run must keep: the checkpoint only fits the model it was trained on.
_FIXED_ON_RESUME = ("model", "env", "finetune", "lora_rank", "lora_alpha", "lora_target_modules")


# --------------------------------------------------------------------------------------------------
# Configuration: preset (or the resumed run's config) first, then the command line's flags on top
# --------------------------------------------------------------------------------------------------
def parse_config(argv: list[str] | None = None) -> TrainConfig:
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--resume", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.resume is not None:
        if known.preset is not None:
            raise GenrlError("--preset cannot change on --resume (the run keeps its saved configuration); drop it")
        base = read_config(known.resume / "config.json")
    else:
        base = preset(known.preset or DEFAULT_PRESET)
    cfg = tyro.cli(TrainConfig, default=base, args=argv, description=__doc__)
    if known.resume is not None:
        for name in _FIXED_ON_RESUME:
            if getattr(cfg, name) != getattr(base, name):
                raise GenrlError(
                    f"--{name.replace('_', '-')} cannot change on --resume (the checkpoint fits "
                    f"{getattr(base, name)!r}); start a new run instead"
                )
    cfg.validate()
    return cfg


def _seed(*keys: int) -> int:
    """An independent 63-bit seed per (run seed, epoch, batch, purpose): the run is a pure function of the seed."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _global_prompts(cfg: TrainConfig, prompt_pool: list[str], epoch: int, batch: int, processes: int) -> list[str]:
    """The prompts of sampling batch ``batch`` over all processes, in runs of ``group_size``."""
    rng = np.random.default_rng(_seed(cfg.seed, epoch, batch, 0))
    picks = rng.integers(len(prompt_pool), size=cfg.sample_batch_size * processes // cfg.group_size)
    return [prompt_pool[i] for i in picks for _ in range(cfg.group_size)]


def _sampling_batches(cfg: TrainConfig, prompt_pool: list[str], epoch: int, processes: Processes) -> list:
    """This process's share of the epoch's sampling batches."""
    rows = processes.noise_slice(cfg.sample_batch_size)
    return [
        SamplingBatch(
            _global_prompts(cfg, prompt_pool, epoch, b, processes.count)[
                rows.offset : rows.offset + cfg.sample_batch_size
            ],
            _seed(cfg.seed, epoch, b, 1),
            _seed(cfg.seed, epoch, b, 2),
            rows,
        )
        for b in range(cfg.batches_per_epoch)
    ]


def _sample_with_ema(ema: EMAModel, policy, env, cfg: TrainConfig, prompt_pool: list[str], processes) -> Rollout:
    """The evaluation batch (the same prompts and noise at every epoch) sampled with the EMA weights."""
    batch = _sampling_batches(cfg, prompt_pool, epoch=0, processes=processes)[0]  # training starts at epoch 1
    params = policy.trainable_parameters()
    ema.store(params)
    ema.copy_to(params)
    try:
        prompts = batch.prompts
        return collect(
            env,
            policy,
            prompts,
            [{} for _ in prompts],
            batch.noise_seed,
            batch.step_seed,
            noise_slice=batch.noise_slice,
        ).resolve()
    finally:
        ema.restore(params)


def _policy_gradient_epoch(
    cfg: TrainConfig,
    env,
    policy,
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    tracker: PerPromptStatTracker | None,
    batches: list[SamplingBatch],
    prompt_pool: list[str],
    epoch: int,
    processes: Processes,
) -> tuple[list[Rollout], torch.Tensor, dict[str, float], float, float]:
    """PPO and REINFORCE: 1. sample the batches into the buffer, 2. advantages from the global batch's rewards,
    3. the update. Returns the rollouts, the global rewards, the training statistics, and the seconds spent
    waiting for rewards and training."""
    shared_noise = cfg.group_size if cfg.group_shared_noise else 1
    rollouts = [
        collect(env, policy, b.prompts, [{} for _ in b.prompts], b.noise_seed, b.step_seed, shared_noise, b.noise_slice)
        for b in batches
    ]
    wait_start = time.perf_counter()
    buffer = TrajectoryBuffer()
    for rollout in rollouts:  # with --async-rewards, the rewards were computed while sampling went on
        rollout.resolve()
        buffer.add_batch(
            rollout.prompts,
            rollout.metadata,
            rollout.prompt_embeds,
            rollout.negative_prompt_embeds,
            rollout.steps,
            rollout.rewards,
        )
    reward_wait = time.perf_counter() - wait_start

    train_start = time.perf_counter()
    # Every process computes the advantages of the global batch, then keeps its own rows.
    global_prompts = [
        p for b in range(cfg.batches_per_epoch) for p in _global_prompts(cfg, prompt_pool, epoch, b, processes.count)
    ]
    global_rewards = _global_rewards(rollouts, processes)
    advantages = compute_advantages(global_prompts, global_rewards, tracker, cfg.group_size, cfg.group_std)
    buffer.place(processes.rank, processes.count)  # minibatches are cut from the global batch
    buffer.advantages = advantages[buffer.global_rows.to(advantages.device)]
    stats: dict[str, float] = {}
    # A group of equal rewards teaches nothing: leave it out of the update. Every process drops the same groups
    # of the global batch, so N processes cut the minibatches of one (a process may hold none of some of them).
    if cfg.group_size > 1:
        kept = informative_groups(advantages, cfg.group_size)
        stats["groups_kept_fraction"] = len(kept) / len(advantages)
        buffer = buffer.subset(kept)
    if buffer.num_global:
        shuffle = torch.Generator().manual_seed(_seed(cfg.seed, epoch, 0, 3))
        update = BUFFER_ALGORITHMS[cfg.algo]
        stats.update(update(policy, optimizer, buffer, cfg, shuffle, lr_scheduler, processes))
    return rollouts, global_rewards, stats, reward_wait, time.perf_counter() - train_start


def _global_rewards(rollouts: list[Rollout], processes: Processes) -> torch.Tensor:
    """The rewards of the epoch's global batches, in the order one process would have sampled them."""
    return torch.cat([processes.gather(r.rewards) for r in rollouts])


def _claim_run_dir(cfg: TrainConfig, processes: Processes) -> tuple[RunDir, Path | None]:
    """The run directory, locked by the main process against a second run, and the checkpoint to resume from
    (None: from scratch, also on --resume of a run stopped before its first checkpoint)."""
    if cfg.resume is not None:
        run = RunDir(cfg.resume)
    else:  # the main process names the run: the time differs between processes
        run = RunDir(
            cfg.output_dir / processes.broadcast(cfg.run_name or f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
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
            problem = str(exc)
    problem = processes.broadcast(problem)  # every process stops, not only the main one
    if problem:
        raise GenrlError(problem)
    checkpoint = latest_checkpoint(run.checkpoints) if cfg.resume is not None else None
    if cfg.resume is not None and checkpoint is None and processes.is_main:
        print(f"{run.path} has no checkpoint yet: the run starts again from epoch 1", file=sys.stderr)
    return run, checkpoint


def _check_finite(epoch: int, stats: dict[str, float], policy, cfg: TrainConfig) -> None:
    """Stop a diverged run before its epoch is logged or saved. NaN weights decode to black images, which a
    JPEG-size reward scores best: left alone, the reward would seem to improve."""
    bad = next((key for key in ("loss", "grad_norm") if key in stats and not math.isfinite(stats[key])), None)
    if bad is None and not all(torch.isfinite(p).all() for p in policy.trainable_parameters()):
        bad = "weights"
    if bad is not None:
        raise GenrlError(
            f"epoch {epoch}: the {bad.replace('_', ' ')} became NaN or infinite, so training diverged, most likely "
            f"because --learning-rate {cfg.learning_rate:g} is too high; lower it and start again (nothing of "
            "this epoch was saved)"
        )


# --------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> RunDir:
    prompt_pool = load_prompts(cfg.prompts)
    reward_fn = load_reward(cfg.reward)
    if cfg.algo == "dpg" and not reward_fn.differentiable:
        raise GenrlError(
            f"--algo dpg needs a differentiable reward, and '{cfg.reward}' is not (a reward declares it with "
            "differentiable = True); use --algo ppo or reinforce, or a reward such as shapes_alignment"
        )
    processes = Processes(cfg.device, cfg.process_timeout_s)
    device = processes.device
    pipe = load_pipeline(cfg.model, cfg.env, device)
    executor = (  # one intra-op thread for the reward: two OpenMP teams on the same cores stall each other
        ThreadPoolExecutor(1, "reward", initializer=torch.set_num_threads, initargs=(1,)) if cfg.async_rewards else None
    )
    try:
        if cfg.env == "lcm":
            env = LCMEnv(
                cfg.sample_batch_size, pipe, reward_fn, cfg.num_steps, cfg.noise_last_step, cfg.resolution, executor
            )
        else:
            env = DDPMEnv(cfg.sample_batch_size, pipe, reward_fn, cfg.num_steps, cfg.resolution, executor)
    except ValueError as exc:  # the env checks the pipeline and the image size against each other
        raise GenrlError(f"--model {cfg.model} with --resolution: {exc}") from None
    torch.manual_seed(_seed(cfg.seed, 0, 0, 4))  # the LoRA's random initial A comes from torch's global RNG
    if cfg.finetune == "lora":
        add_lora(pipe.unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_target_modules)
    else:
        pipe.unet.requires_grad_(True)
    if cfg.algo == "dpg" and cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        pipe.vae.enable_gradient_checkpointing()
    policy = make_policy(cfg.env, pipe, cfg.guidance_scale, cfg.logprob_reduction, cfg.eta).eval()
    optimizer = torch.optim.AdamW(
        policy.trainable_parameters(),
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
        fused=torch.device(device).type in ("cpu", "cuda"),  # one kernel for all tensors: 4x faster on CPU
    )
    lr_scheduler = get_scheduler("constant", optimizer)
    tracker = None
    if cfg.advantages == "per_prompt" and cfg.group_size == 1:  # groups bring their own statistics
        tracker = PerPromptStatTracker(cfg.stat_buffer_size, cfg.stat_min_count)
    ema = None
    if cfg.ema_decay > 0:
        ema = EMAModel(policy.trainable_parameters(), decay=cfg.ema_decay)
        optimizer.register_step_post_hook(lambda *_: ema.step(policy.trainable_parameters()))

    run, checkpoint = _claim_run_dir(cfg, processes)
    with run:  # released however the run ends
        counters = {"epoch": 0, "reward_queries": 0, "wall_time_s": 0.0}
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, pipe.unet, optimizer, lr_scheduler, ema)
            counters = state["counters"]
            saved_by = state.get("num_processes", 1)
            if saved_by != processes.count:
                raise GenrlError(
                    f"--resume {cfg.resume}: the run was trained on {saved_by} processes, this launch has "
                    f"{processes.count}; resume with --num_processes {saved_by}"
                )
            if tracker is not None and state.get("tracker"):
                tracker.load_state_dict(state["tracker"])
        if processes.is_main:
            run.keep_metrics_before(counters["epoch"] + 1)  # the epochs after the checkpoint will run again
            run.create(config_to_json(cfg))
            print(f"run directory: {run.path}", flush=True)

        bar = tqdm(  # disable=None: a bar on a terminal, none in logs
            range(counters["epoch"] + 1, cfg.epochs + 1),
            desc="epochs",
            initial=counters["epoch"],
            total=cfg.epochs,
            disable=None if processes.is_main else True,
        )
        # Wall-clock counts everything from here on, logging and checkpoints included, across resumed segments.
        segment_start, wall_before = time.perf_counter(), counters["wall_time_s"]
        for epoch in bar:
            epoch_start = time.perf_counter()
            batches = _sampling_batches(cfg, prompt_pool, epoch, processes)
            if cfg.algo == "dpg":
                # DPG samples and learns in one pass: each batch's reward gradient flows back through its chain.
                rollouts, stats = dpg.update(
                    env, policy, optimizer, batches, cfg, lr_scheduler, processes.average_gradients
                )
                rewards = _global_rewards(rollouts, processes)
                reward_wait = 0.0
                spent = sum(r.sample_time_s + r.reward_time_s for r in rollouts)
                train_time = time.perf_counter() - epoch_start - spent
            else:
                rollouts, rewards, stats, reward_wait, train_time = _policy_gradient_epoch(
                    cfg, env, policy, optimizer, lr_scheduler, tracker, batches, prompt_pool, epoch, processes
                )
            stats = processes.mean(stats)
            _check_finite(epoch, stats, policy, cfg)
            first_batch = rollouts[0]
            counters["reward_queries"] += len(rewards)
            parts: dict[str, list[torch.Tensor]] = {}
            for rollout in rollouts:
                for name, values in rollout.reward_parts.items():
                    parts.setdefault(name, []).append(processes.gather(values.detach()).cpu())
            sample_time = sum(r.sample_time_s for r in rollouts)
            reward_time = sum(r.reward_time_s for r in rollouts)

            counters["epoch"] = epoch
            counters["wall_time_s"] = wall_before + time.perf_counter() - segment_start
            metrics = {
                "epoch": epoch,
                "reward_mean": rewards.mean().item(),
                "reward_std": rewards.std(unbiased=False).item(),
                "reward_queries": counters["reward_queries"],
                "wall_time_s": counters["wall_time_s"],
                "sample_time_s": sample_time,
                "reward_time_s": reward_time,
                "reward_wait_s": reward_wait,
                "train_time_s": train_time,
                "lr": lr_scheduler.get_last_lr()[0],
                **stats,
            }
            if parts:
                metrics["reward_parts"] = {name: torch.cat(v).mean().item() for name, v in parts.items()}
            out_of_time = cfg.time_budget_s is not None and counters["wall_time_s"] >= cfg.time_budget_s
            log_images = epoch in (1, cfg.epochs) or epoch % cfg.log_images_every == 0 or out_of_time
            if processes.is_main:  # the only one that writes
                if log_images and ema is not None:
                    evaluation = _sample_with_ema(ema, policy, env, cfg, prompt_pool, processes)
                    metrics["ema_reward_mean"] = evaluation.rewards.mean().item()
                    run.save_samples(epoch, evaluation.images, evaluation.prompts, evaluation.rewards, suffix="-ema")
                run.log_metrics(metrics)
                if log_images:
                    run.save_samples(epoch, first_batch.images, first_batch.prompts, first_batch.rewards)
                if epoch % cfg.save_every == 0 or epoch == cfg.epochs or out_of_time:
                    state = {
                        "counters": counters,
                        "tracker": tracker.state_dict() if tracker is not None else None,
                        "num_processes": processes.count,
                    }
                    save_checkpoint(
                        run.checkpoints, epoch, pipe.unet, optimizer, lr_scheduler, state, cfg.keep_checkpoints, ema
                    )
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", loss=f"{metrics.get('loss', float('nan')):.2e}")
            if out_of_time:
                break
        bar.close()
    if executor is not None:
        executor.shutdown()
    processes.wait()  # the last checkpoint is complete before any process leaves

    history = run.read_metrics() if processes.is_main else []
    if history:
        print(
            f"reward_mean: epoch {history[0]['epoch']}: {history[0]['reward_mean']:.4f} -> "
            f"epoch {history[-1]['epoch']}: {history[-1]['reward_mean']:.4f}"
        )
    if processes.is_main:
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
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
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
    except KeyboardInterrupt:
        print("interrupted; the latest complete checkpoint is kept: continue with --resume RUN_DIR", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
