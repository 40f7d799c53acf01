"""Peak memory per sample of one DPG update (reward backpropagated through the whole chain), with and without
gradient checkpointing, and their ratio.

    python -m benchmarks.dpg_memory [--preset shapes-rlcm-alignment] [--batch-size 8] [--device cpu]

Each setting runs in a fresh process. On CUDA the peak is ``torch.cuda.max_memory_allocated`` over the update; on
a CPU it is the peak resident set (VmHWM, reset just before the update) above the resident set before it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro


@dataclass
class Args:
    preset: str = "shapes-rlcm-alignment"
    batch_size: int = 8
    device: str = "cpu"
    child: bool | None = None
    """Internal: run one measurement with checkpointing on (True) or off (False) and print it as JSON."""


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(args: Args, checkpointing: bool) -> float:
    """MiB per sample of one DPG forward and backward pass."""
    from genrl.assemble import assemble
    from genrl.config import replace_config
    from genrl.presets import preset
    from genrl.prompts import load_prompts
    from genrl.rollout import SamplingBatch, collect

    cfg = replace_config(
        preset(args.preset),
        algo="dpg",
        group_size=1,
        sample_batch_size=args.batch_size,
        gradient_checkpointing=checkpointing,
    )
    parts = assemble(cfg, args.device)
    env, policy = parts.env, parts.policy.train()
    prompts = load_prompts(cfg.prompts)[: args.batch_size]
    collect(env, policy, SamplingBatch(prompts, 0, 0))  # warm-up: allocator pools, lazy modules

    def update() -> None:
        rollout = collect(env, policy, SamplingBatch(prompts, 1, 1), grad_steps=parts.algorithm.grad_steps)
        (-rollout.rewards.mean()).backward()

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        update()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20 / args.batch_size
    base = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    update()
    return (_status_kb("VmHWM") - base) / 1024 / args.batch_size


def main(args: Args) -> None:
    if args.child is not None:
        print(json.dumps({"mib_per_sample": measure(args, args.child)}))
        return
    results = {}
    for checkpointing in (False, True):
        argv = [
            sys.executable,
            "-m",
            "benchmarks.dpg_memory",
            "--preset",
            args.preset,
            "--batch-size",
            str(args.batch_size),
            "--device",
            args.device,
            "--child",
            str(checkpointing),
        ]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[checkpointing] = json.loads(out)["mib_per_sample"]
    print(f"DPG update, {args.preset}, batch {args.batch_size}, device {args.device}: peak memory per sample")
    print(f"  without gradient checkpointing: {results[False]:8.1f} MiB")
    print(f"  with gradient checkpointing:    {results[True]:8.1f} MiB")
    print(f"  ratio (without / with): {results[False] / results[True]:.2f}x")


if __name__ == "__main__":
    main(tyro.cli(Args))
