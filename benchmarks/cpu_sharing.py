"""An epoch's wall-clock and CPU time, alone and beside other work, for several thread and speed settings.

    python -m benchmarks.cpu_sharing [--preset shapes-rlcm-compression] [--epochs 6]
        [--variants default one-thread ...] [--beside alone busy genrl]

Each variant is ``python -m genrl.train`` with its own flags and environment (``VARIANTS``). It runs alone, beside
one busy single-thread process (a Python loop that never sleeps), or beside a second copy of itself started at the
same moment. The figures are the measured run's own: the median epoch's wall-clock and the CPU time of all epochs
but the first (warm-up), from metrics.jsonl (``wall_time_s`` and ``cpu_time_s``, the process's CPU time on every
core, evaluation left out). The ratios compare each variant and situation with the first variant alone.

Run it on an otherwise idle machine: anything else running is a competitor that the table does not name.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "default": ([], {}),
    "before": (["--threads", "2"], {}),  # genrl before it chose: every core of the 2-core machine
    "one-thread": (["--threads", "1"], {}),
    "spin-1k": (["--threads", "2"], {"GOMP_SPINCOUNT": "1000"}),  # waiting threads sleep sooner
    "channels-last": (["--channels-last"], {}),
    "compile": (["--compile"], {}),
}
"""name: (genrl.train flags, environment variables) on top of the preset."""

BUSY_LOOP = "while True: pass"


@dataclass
class Args:
    preset: str = "shapes-rlcm-compression"
    """The preset the runs train (the default preset's numbers, by default)."""
    epochs: int = 6
    """Epochs per run; the first is warm-up and left out."""
    variants: list[str] = field(default_factory=lambda: ["before", "default", "one-thread"])
    """Names from VARIANTS; the first is the reference of the ratios."""
    beside: list[str] = field(default_factory=lambda: ["alone", "busy", "genrl"])
    """Situations: alone, beside a busy single-thread process, beside a second copy of the run."""


def _command(args: Args, flags: list[str], out: Path, name: str) -> list[str]:
    train = ["--preset", args.preset, "--epochs", str(args.epochs), "--eval-every", "0", "--log-images-every", "1000"]
    return [sys.executable, "-m", "genrl.train", *train, *flags, "--output-dir", str(out), "--run-name", name]


def epoch_figures(run: Path) -> tuple[float, float]:
    """(median epoch wall-clock, CPU seconds of every epoch but the first) from a run's metrics.jsonl."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    walls = [b["wall_time_s"] - a["wall_time_s"] for a, b in zip(records, records[1:])]
    return statistics.median(walls), records[-1]["cpu_time_s"] - records[0]["cpu_time_s"]


def measure(args: Args, variant: str, beside: str, out: Path) -> tuple[float, float]:
    flags, extra_env = VARIANTS[variant]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **extra_env}
    name = f"{variant}-{beside}"
    others = []
    if beside == "busy":
        others.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP]))
    elif beside == "genrl":
        twin = _command(args, flags, out, name + "-twin")
        others.append(subprocess.Popen(twin, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        subprocess.run(_command(args, flags, out, name), env=env, check=True, capture_output=True, text=True)
    finally:
        for other in others:
            other.kill()
            other.wait()
    return epoch_figures(out / name)


def main(args: Args) -> None:
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        raise SystemExit(f"error: --variants takes names from {', '.join(VARIANTS)}; got {' '.join(unknown)}")
    results: dict[tuple[str, str], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for variant in args.variants:
            for beside in args.beside:
                results[variant, beside] = measure(args, variant, beside, Path(folder))
                wall, cpu = results[variant, beside]
                print(f"  {variant:14s} {beside:6s} wall {wall:6.2f} s/epoch  CPU {cpu:6.1f} s", flush=True)
    reference_wall, reference_cpu = results[args.variants[0], "alone"]
    print(f"\n{args.preset}, {args.epochs} epochs (the first left out), {os.cpu_count()} cores")
    print(f"| variant | beside | wall s/epoch | CPU s for {args.epochs - 1} epochs | wall ratio | CPU ratio |")
    print("|---|---|---|---|---|---|")
    for (variant, beside), (wall, cpu) in results.items():
        print(
            f"| {variant} | {beside} | {wall:.2f} | {cpu:.1f} | {wall / reference_wall:.2f}x | "
            f"{cpu / reference_cpu:.2f}x |"
        )


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
