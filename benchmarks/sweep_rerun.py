"""Issue 41's DDPO tuning-gap check: is the gap between the sweep (DDPO's winning setting met the target on 2 of 2
sweep seeds) and the benchmark (3 of 10 benchmark seeds) the seeds, or the runs (the sweep ran with 1 thread and an
older code version)? The benchmark's own DDPO compression configuration (seed 10's config.json: the sweep's winner,
2 threads) is rerun on the sweep seeds 0 and 1 with this code, and compared with the sweep's runs of the same setting:

    python -m benchmarks.sweep_rerun OUTPUT_DIR        # two DDPO runs, about 7 min each alone on a 2-core CPU
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.fidelity import evaluations, reach, task_reward
from genrl.config_file import read_config
from genrl.train import train

BENCHMARK_RUN = Path("docs/benchmark/runs/compression-ddpo-ppo-seed10")
SWEEP_RUN = "docs/benchmark/sweep/runs/jpeg-ddpo-ppo-learning_rate0.003-seed{seed}"
SEEDS = (0, 1)


def _metrics(folder: Path) -> list[dict]:
    finished = folder / "finished.json"
    if finished.exists():
        return json.loads(finished.read_text())["metrics"]
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def reading(folder: Path) -> dict:
    """Reward queries to the protocol's target (None: not within the budget) and the final gain (the mean of the last
    3 evaluations' task reward over the start), as the sweep's table reads them."""
    metrics = _metrics(folder)
    points = evaluations(metrics)
    start = task_reward(points[0], "compression")
    hit = reach(metrics, "compression")
    final = float(np.mean([task_reward(m, "compression") for m in points[-3:]])) - start
    return {"queries_to_target": None if hit.censored else hit.reward_queries, "final_gain": round(final, 4)}


def main(output_dir: Path) -> None:
    base = read_config(BENCHMARK_RUN / "config.json")
    for seed in SEEDS:
        name = f"compression-ddpo-ppo-seed{seed}"
        if not (output_dir / name / "metrics.jsonl").exists():
            cfg = dataclasses.replace(base, seed=seed, run_name=name, output_dir=output_dir)
            cfg.validate()
            train(cfg)
    for seed in SEEDS:
        print(f"seed {seed}: sweep (1 thread, 2026-12-05) {reading(Path(SWEEP_RUN.format(seed=seed)))}")
        print(f"seed {seed}: rerun (2 threads, this code)  {reading(output_dir / f'compression-ddpo-ppo-seed{seed}')}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
