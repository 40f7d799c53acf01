"""Did a method learn, with the picture kept? A table of runs' fixed-evaluation-set curves, and the mean over seeds.

    python -m benchmarks.seed_check RUN_DIR [RUN_DIR ...] [--accuracy-floor 0.8]

Per run (its metrics.jsonl, evaluated with --eval-every): the start (epoch 0), the best kept evaluation (the largest
gain in eval reward among the evaluations whose prompt accuracy is at least the floor times the start's; the start
itself counts, so it is at least 0), and the last evaluation (gain and accuracy as a share of the start's). Then the
mean of the kept gains over the runs with a 95% t-interval (few seeds: the t quantile, not a bootstrap).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scipy import stats


def evaluations(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if "eval_reward_mean" in r and "eval_prompt_accuracy" in r]


def summary(run: Path, floor: float) -> dict:
    evals = evaluations(run)
    if not evals or evals[0]["epoch"] != 0:
        raise SystemExit(f"error: {run} has no epoch-0 evaluation with prompt accuracy; train it with --eval-every N")
    start = evals[0]
    gain = lambda e: e["eval_reward_mean"] - start["eval_reward_mean"]
    share = lambda e: e["eval_prompt_accuracy"] / start["eval_prompt_accuracy"]
    kept = max((e for e in evals if share(e) >= floor), key=gain)
    end = evals[-1]
    return {
        "run": run.name,
        "start": start["eval_reward_mean"],
        "kept_gain": gain(kept),
        "kept_epoch": kept["epoch"],
        "kept_accuracy": share(kept),
        "end_gain": gain(end),
        "end_epoch": end["epoch"],
        "end_accuracy": share(end),
    }


def t_interval(values: list[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seed_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--accuracy-floor", type=float, default=0.8)
    args = parser.parse_args(argv)
    rows = [summary(run, args.accuracy_floor) for run in args.runs]
    print("| run | start | kept gain (epoch, accuracy) | end gain (epoch, accuracy) |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['start']:.4f} | {r['kept_gain']:+.4f} ({r['kept_epoch']}, {r['kept_accuracy']:.0%}) "
            f"| {r['end_gain']:+.4f} ({r['end_epoch']}, {r['end_accuracy']:.0%}) |"
        )
    mean, low, high = t_interval([r["kept_gain"] for r in rows])
    print(f"\nkept gain over {len(rows)} runs: {mean:+.4f}, 95% t-interval [{low:+.4f}, {high:+.4f}]")


if __name__ == "__main__":
    main()
