"""An epoch's wall-clock and CPU time, alone and beside other work, for several thread and waiting settings.

    python -m benchmarks.cpu_sharing [--preset shapes-rlcm-compression] [--epochs 6] [--repeats 3]
        [--variants default spinning one-thread ...] [--beside alone before same-time after twin]

Each variant is ``python -m genrl.train`` with its own flags and environment (``VARIANTS``). It runs alone or beside
a competitor: one busy single-thread process (a Python loop that never sleeps) already running when the run starts
(``before``), started at the same moment (``same-time``), or arriving once the run has logged its second epoch
(``after``: the case a choice made at the start cannot see); or a second copy of the run started with it (``twin``).
The figures are the measured run's own, from metrics.jsonl (``wall_time_s`` and ``cpu_time_s``: the process's CPU
time on every core, evaluation left out) over its epochs after the second, so that every situation, ``after``
included, is timed on epochs that had its competitor: the median epoch's wall-clock and the mean epoch's CPU time.
Repeats are interleaved (every variant and situation once, then again) and the median repeat is reported, so that a
slow spell of the machine falls on all of them. The ratios compare each variant and situation with the first
variant alone.

Run it on an otherwise idle machine: anything else running is a competitor that the table does not name.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

VARIANTS: dict[str, tuple[list[str], dict[str, str]]] = {
    "default": ([], {}),  # one thread per usable core; the spin shortened while others are busy (genrl/cpu.py)
    "spinning": ([], {"GOMP_SPINCOUNT": "300000"}),  # libgomp's own default, always (a user's setting: no throttle)
    "spin-1k": ([], {"GOMP_SPINCOUNT": "1000"}),  # the short spin, always (genrl's default before SpinThrottle)
    "passive": ([], {"OMP_WAIT_POLICY": "PASSIVE"}),  # waiting threads sleep at once
    "spin-3k": ([], {"GOMP_SPINCOUNT": "3000"}),
    "spin-10k": ([], {"GOMP_SPINCOUNT": "10000"}),
    "spin-30k": ([], {"GOMP_SPINCOUNT": "30000"}),
    "one-thread": (["--threads", "1"], {}),
}
"""name: (genrl.train flags, environment variables) on top of the preset."""

BUSY_LOOP = "while True: pass"
WARM_UP_EPOCHS = 2
"""Epochs left out of the figures; ``after``'s competitor arrives once they are logged."""


@dataclass
class Args:
    preset: str = "shapes-rlcm-compression"
    """The preset the runs train (the benchmark's RLCM preset: the default preset's sampling and update)."""
    epochs: int = 6
    """Epochs per run; the first two are warm-up and left out."""
    repeats: int = 3
    """Interleaved repeats of every variant and situation; the median is reported."""
    variants: list[str] = field(default_factory=lambda: ["spinning", "default", "one-thread"])
    """Names from VARIANTS; the first is the reference of the ratios."""
    beside: list[str] = field(default_factory=lambda: ["alone", "before", "same-time", "after"])
    """Situations: alone; a busy single-thread process started before, with or after the run; a second copy of it."""


def _command(args: Args, flags: list[str], out: Path, name: str) -> list[str]:
    train = ["--preset", args.preset, "--epochs", str(args.epochs), "--eval-every", "0", "--log-images-every", "1000"]
    return [sys.executable, "-m", "genrl.train", *train, *flags, "--output-dir", str(out), "--run-name", name]


def _records(run: Path) -> list[dict]:
    metrics = run / "metrics.jsonl"
    return [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []


def epoch_figures(run: Path) -> tuple[float, float]:
    """(median epoch wall-clock, mean epoch CPU seconds) over the epochs after the warm-up, from metrics.jsonl."""
    records = _records(run)[WARM_UP_EPOCHS - 1 :]
    walls = [b["wall_time_s"] - a["wall_time_s"] for a, b in zip(records, records[1:])]
    return statistics.median(walls), (records[-1]["cpu_time_s"] - records[0]["cpu_time_s"]) / len(walls)


def _busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", BUSY_LOOP])


def measure(args: Args, variant: str, beside: str, out: Path) -> tuple[float, float]:
    flags, extra_env = VARIANTS[variant]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **extra_env}
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):  # the variant says how threads wait
        env.pop(name, None)
    env.update(extra_env)
    name = f"{variant}-{beside}-{time.monotonic_ns()}"
    others = []
    try:
        if beside == "before":
            others.append(_busy())
            time.sleep(1.0)
        run = subprocess.Popen(_command(args, flags, out, name), env=env, stdout=subprocess.DEVNULL)
        if beside == "same-time":
            others.append(_busy())
        elif beside == "twin":
            twin = _command(args, flags, out, name + "-twin")
            others.append(subprocess.Popen(twin, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        elif beside == "after":
            while run.poll() is None and len(_records(out / name)) < WARM_UP_EPOCHS:
                time.sleep(0.05)
            others.append(_busy())
        if run.wait() != 0:
            raise SystemExit(f"error: the {variant} run {beside} failed (exit {run.returncode})")
    finally:
        for other in others:
            other.kill()
            other.wait()
    return epoch_figures(out / name)


def main(args: Args) -> None:
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        raise SystemExit(f"error: --variants takes names from {', '.join(VARIANTS)}; got {' '.join(unknown)}")
    if args.epochs < WARM_UP_EPOCHS + 2:
        raise SystemExit(f"error: --epochs must be at least {WARM_UP_EPOCHS + 2} (two are warm-up)")
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for variant in args.variants:
                for beside in args.beside:
                    wall, cpu = measure(args, variant, beside, Path(folder))
                    samples.setdefault((variant, beside), []).append((wall, cpu))
                    print(f"  {repeat + 1}: {variant:12s} {beside:9s} wall {wall:6.2f} s/epoch  CPU {cpu:6.2f} s/epoch")
    results = {
        key: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
        for key, runs in samples.items()
    }
    reference_wall, reference_cpu = results[args.variants[0], "alone"]
    print(
        f"\n{args.preset}, {args.epochs} epochs (the first {WARM_UP_EPOCHS} left out), {os.cpu_count()} cores, "
        f"median of {args.repeats} interleaved repeats"
    )
    print("| variant | beside | wall s/epoch | CPU s/epoch | wall ratio | CPU ratio | vs its own alone: wall, CPU |")
    print("|---|---|---|---|---|---|---|")
    for (variant, beside), (wall, cpu) in results.items():
        own_wall, own_cpu = results.get((variant, "alone"), (float("nan"), float("nan")))
        print(
            f"| {variant} | {beside} | {wall:.2f} | {cpu:.2f} | {wall / reference_wall:.2f}x | "
            f"{cpu / reference_cpu:.2f}x | {wall / own_wall:.2f}x, {cpu / own_cpu:.2f}x |"
        )


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
