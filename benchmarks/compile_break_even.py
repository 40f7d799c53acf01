"""What ``--compile`` costs and when it pays: a run eager, compiled on a cold cache, compiled again on the warm one.

    python -m benchmarks.compile_break_even [--preset shapes-quickstart] [--epochs 10] [--threads 2]

Three ``python -m genrl.train`` runs of the same preset and seed (no evaluation, so the timings are training's):
eager; ``--compile`` with an empty torch inductor cache (``TORCHINDUCTOR_CACHE_DIR``: the first start on a machine);
``--compile`` again on that cache (a second start). torch.compile works lazily, so the first epoch carries the
compilation. From metrics.jsonl: the first epoch's wall-clock and the median of the others. The compilation's cost is
the first epoch's excess over eager's; the break-even is that cost over the time an epoch saves. Then the numbers:
each compiled run's reward_mean and loss against eager's (float tolerance, not bits: inductor's kernels sum in other
orders) and the two compiled runs against each other (bits: a compiled run is as reproducible as an eager one).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Args:
    preset: str = "shapes-quickstart"
    """The preset the runs train (the default preset, by default)."""
    epochs: int = 10
    threads: int = 2
    seed: int = 0


def _run(args: Args, out: Path, name: str, compile_: bool, cache: Path) -> tuple[list[dict], float]:
    command = [sys.executable, "-m", "genrl.train", "--preset", args.preset, "--epochs", str(args.epochs)]
    command += ["--seed", str(args.seed), "--threads", str(args.threads), "--eval-every", "0"]
    command += ["--log-images-every", "1000", "--output-dir", str(out), "--run-name", name]
    command += ["--compile"] if compile_ else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    return [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()], elapsed


def _epochs(records: list[dict]) -> tuple[float, float]:
    """(first epoch's wall-clock, median of the other epochs')."""
    walls = [b["wall_time_s"] - a["wall_time_s"] for a, b in zip(records, records[1:])]
    return records[0]["wall_time_s"], statistics.median(walls)


def _largest_difference(a: list[dict], b: list[dict], key: str) -> float:
    return max(abs(x[key] - y[key]) for x, y in zip(a, b))


def main(args: Args) -> None:
    with tempfile.TemporaryDirectory() as folder:
        out, cache = Path(folder), Path(folder) / "inductor-cache"
        runs = {
            "eager": _run(args, out, "eager", False, cache),
            "compiled, cold cache": _run(args, out, "cold", True, cache),
            "compiled, warm cache": _run(args, out, "warm", True, cache),
        }
    eager_first, eager_epoch = _epochs(runs["eager"][0])
    print(f"\n{args.preset}, {args.epochs} epochs, {args.threads} threads, seed {args.seed}, {os.cpu_count()} cores")
    print("| run | process s | first epoch s | later epochs s (median) | speed-up | compile s | break-even epochs |")
    print("|---|---|---|---|---|---|---|")
    for name, (records, process) in runs.items():
        first, epoch = _epochs(records)
        cost = (first - epoch) - (eager_first - eager_epoch)
        saving = eager_epoch - epoch
        even = cost / saving if saving > 0 else math.inf
        shown = "-" if name == "eager" else f"{cost:.0f} | {even:.0f}"
        print(f"| {name} | {process:.0f} | {first:.1f} | {epoch:.2f} | {eager_epoch / epoch:.2f}x | {shown} |")
    eager, cold, warm = (records for records, _ in runs.values())
    for key in ("reward_mean", "loss"):
        print(
            f"largest |{key} difference| over the epochs: compiled vs eager {_largest_difference(cold, eager, key):.2e}"
            f", cold vs warm compiled {_largest_difference(cold, warm, key):.2e}"
        )


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
