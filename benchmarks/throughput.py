"""Training throughput on 1 and on N processes: images sampled and trained per second, and their ratio.

    python -m benchmarks.throughput [--preset shapes-rlcm-compression] [--processes 2] [--epochs 6]

Every process keeps the preset's per-process batch, so N processes train on N times the images per epoch. The
cores are shared out: one process gets all of them (torch threads = cores), each of N gets cores / N. The first
epoch (warm-up) is left out of the rate.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from genrl.distributed import launch_command


@dataclass
class Args:
    preset: str = "shapes-rlcm-compression"
    processes: int = 2
    epochs: int = 6
    device: str = "cpu"


def images_per_second(args: Args, processes: int, out: Path) -> float:
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    train = ["--preset", args.preset, "--epochs", str(args.epochs), "--device", args.device]
    train += ["--output-dir", str(out), "--run-name", f"p{processes}", "--log-images-every", "1000"]
    train += ["--eval-every", "0"]  # training throughput only
    subprocess.run(launch_command(processes, "genrl.train", train), check=True, env=env, capture_output=True)
    metrics = [json.loads(line) for line in (out / f"p{processes}" / "metrics.jsonl").read_text().splitlines()]
    first, last = metrics[0], metrics[-1]
    return (last["reward_queries"] - first["reward_queries"]) / (last["wall_time_s"] - first["wall_time_s"])


def main(args: Args) -> None:
    with tempfile.TemporaryDirectory() as out:
        rates = {n: images_per_second(args, n, Path(out)) for n in (1, args.processes)}
    print(f"{args.preset}, {args.epochs} epochs (first left out), {os.cpu_count()} cores, device {args.device}:")
    for n, rate in rates.items():
        print(f"  {n} process{'es' if n > 1 else ''}: {rate:7.2f} images sampled and trained per second")
    print(f"  ratio ({args.processes} / 1): {rates[args.processes] / rates[1]:.2f}x")


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
