"""Where an epoch's CPU goes: its phases (sampling, reward, update) and the torch operations inside them.

    python -m benchmarks.epoch_profile [--preset shapes-quickstart] [--epochs 3] [--threads 2] [--rows 15]

Builds the preset's training as ``genrl.train`` does, runs one warm-up epoch, then ``--epochs`` epochs under
torch.profiler. Prints the epoch's wall-clock and process CPU time, its phases' share of the wall-clock (from the
epoch's own metrics), and the torch operations that took the most time of their own on the calling thread (an
operation's OpenMP threads work inside that time), as shares of all operations' time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from genrl.config import replace_config
from genrl.presets import preset
from genrl.train import build, run_epoch


@dataclass
class Args:
    preset: str = "shapes-quickstart"
    """The preset profiled (the default preset, by default)."""
    epochs: int = 3
    threads: int = 2
    rows: int = 15
    """Operations listed."""


def main(args: Args) -> None:
    cfg = replace_config(preset(args.preset), threads=args.threads, epochs=args.epochs + 1)
    torch.set_num_threads(args.threads)
    t = build(cfg)
    run_epoch(t, 1)  # warm-up: first calls allocate and pick kernels
    phases = {"sample_time_s": 0.0, "reward_time_s": 0.0, "train_time_s": 0.0}
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        wall, cpu = time.perf_counter(), time.process_time()  # inside: the profiler's own closing work left out
        for epoch in range(2, args.epochs + 2):
            metrics = run_epoch(t, epoch)[1]
            for name in phases:
                phases[name] += metrics[name]
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"\n{args.preset}, {args.epochs} epochs after a warm-up one, {args.threads} threads (profiler on)")
    print(f"per epoch: {wall / args.epochs:.2f} s wall-clock, {cpu / args.epochs:.2f} s CPU")
    shares = {
        "sampling (denoising and VAE decode)": phases["sample_time_s"],
        "reward": phases["reward_time_s"],
        "update (log-probs, backward, optimizer)": phases["train_time_s"],
    }
    for name, seconds in shares.items():
        print(f"  {name}: {seconds / args.epochs:.2f} s ({seconds / wall:.0%} of the wall-clock)")
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(
        f"\n| operation | calls per epoch | own time s per epoch | share ({total / 1e6 / args.epochs:.2f} s an epoch) |"
    )
    print("|---|---|---|---|")
    for event in events[: args.rows]:
        print(
            f"| {event.key} | {event.count / args.epochs:.0f} | {event.self_cpu_time_total / 1e6 / args.epochs:.3f} | "
            f"{event.self_cpu_time_total / total:.1%} |"
        )


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
