"""``python -m benchmarks.sweep``: each method's own best settings on the shapes suite, found the same way.

    python -m benchmarks.sweep --output-dir docs/benchmark/sweep      # ~2.5 h on a 2-core CPU; resumable

The protocol's sweep (docs/benchmark/PROTOCOL.md): per task family (JPEG, tuned on compression; alignment) and
method, a grid of settings (learning rates, a KL penalty to the frozen model, a composite reward with the shapes
alignment term, DDPO's published update structure) trains at the benchmark's budget on the sweep seeds, judged on
the fixed evaluation set by the benchmark's own target: the first evaluation that gains ``DELTA`` in the task's
reward while keeping 80% of the starting prompt accuracy (benchmarks/fidelity.py). The winner reaches it on the
most seeds, then with the fewest reward queries (censored runs count the budget), then with the largest final gain.
Winners go into ``_SHAPES_SWEPT`` in genrl/presets.py by hand; the table into ``OUT/sweep.md`` and ``OUT/sweep.json``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.fidelity import ACCURACY_KEPT, DELTA, evaluations, reach, task_reward
from benchmarks.methods import DDPO_PPO, FLOW_GRPO, RLCM_DPG, RLCM_PPO, Method
from benchmarks.runs import Progress, budgeted, check_names, command_line, run_to_completion
from genrl.config import TrainConfig, replace_config
from genrl.errors import GenrlError
from genrl.presets import PRESETS, with_alignment_term
from genrl.rundir import RunDirInUse, atomic_write_text

SWEEP_SEEDS = (0, 1)
"""The protocol's sweep seeds; the benchmark's are others (benchmarks/run.py ``BENCHMARK_SEEDS``)."""
BUDGET = 1024
EVAL_QUERIES = 64
"""The benchmark's budget and evaluation interval (a setting whose epoch is longer is evaluated once an epoch)."""

_LRS = (3e-4, 1e-3, 3e-3)
# ddpo-pytorch's published structure on 8 GPUs: 256 images an epoch, 4 optimizer steps of 64 (train batch 4 x
# accumulation 2 x 8 processes); here 16 batches of 16 images and steps of 8 x 8.
DDPO_PUBLISHED = {"batches_per_epoch": 16, "train_batch_size": 8, "gradient_accumulation_steps": 8}
# Family -> (the task it is tuned on, method -> (base preset, settings tried)). The fidelity settings (KL 0.1 and the
# alignment term at weight 1) are tried at each method's middle learning rate; Flow-GRPO's (the protocol's addendum):
# its own KL 0.04 and an SDE window over the first half of its 10 steps.
FLOW_GRID = [
    *({"learning_rate": lr} for lr in _LRS),
    {"learning_rate": 1e-3, "kl_coef": 0.04},
    {"learning_rate": 1e-3, "sde_window": (0, 5)},
]
GRID: dict[str, tuple[str, dict[Method, tuple[str, list[dict]]]]] = {
    "jpeg": (
        "compression",
        {
            RLCM_PPO: (
                "shapes-rlcm-compression",
                [
                    *({"learning_rate": lr} for lr in _LRS),
                    {"learning_rate": 1e-3, "kl_coef": 0.1},
                    {"learning_rate": 1e-3, "alignment_term": 1.0},
                ],
            ),
            DDPO_PPO: (
                "shapes-ddpo-compression",
                [
                    *({"learning_rate": lr} for lr in (1e-3, 3e-3, 1e-2)),
                    {"learning_rate": 3e-3, "kl_coef": 0.1},
                    {"learning_rate": 3e-3, "alignment_term": 1.0},
                    {"learning_rate": 3e-3, **DDPO_PUBLISHED},
                ],
            ),
            FLOW_GRPO: ("shapes-flow-compression", FLOW_GRID),
        },
    ),
    "alignment": (
        "alignment",
        {
            RLCM_PPO: ("shapes-rlcm-alignment", [{"learning_rate": lr} for lr in _LRS]),
            RLCM_DPG: ("shapes-dpg-alignment", [{"learning_rate": lr} for lr in _LRS]),
            FLOW_GRPO: ("shapes-flow-alignment", FLOW_GRID),
        },
    ),
}


@dataclass
class Args:
    output_dir: Path = Path("sweep-results")
    families: tuple[str, ...] = ("jpeg", "alignment")
    device: str = "cpu"
    from_end: bool = False
    """Take the runs last to first: a second process on the same --output-dir works from the other end (each run
    then takes one thread of a 2-core CPU), skipping the run the first one holds."""


def setting_name(settings: dict) -> str:
    if settings.keys() >= DDPO_PUBLISHED.keys():
        rest = {k: v for k, v in settings.items() if k not in DDPO_PUBLISHED}
        return ", ".join([*(f"{k}={v}" for k, v in rest.items()), "published structure (256 images, 4 steps)"])
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def setting_config(base: str, settings: dict) -> TrainConfig:
    """The base preset with ``settings``; ``alignment_term`` adds the shapes alignment term to its reward."""
    settings = dict(settings)
    cfg = PRESETS[base]
    weight = settings.pop("alignment_term", 0.0)
    if weight:
        settings["reward"] = with_alignment_term(cfg.reward, weight)
    return replace_config(cfg, **settings)


def score(runs: list[list[dict]], task: str) -> dict:
    """Over the seeds' runs: how many reach the target, the mean reward queries to it (the budget where censored),
    the mean final gain in the task reward (mean of the last 3 evaluations minus the start), the mean start and
    final prompt accuracy, and the training seconds per reward query."""
    reached = [reach(m, task) for m in runs]
    finals = [evaluations(m) for m in runs]
    gain = [np.mean([task_reward(p, task) for p in e[-3:]]) - task_reward(e[0], task) for e in finals]
    accuracy = [[p.get("eval_prompt_accuracy", np.nan) for p in e] for e in finals]
    return {
        "reached": sum(not r.censored for r in reached),
        "seeds": len(runs),
        "queries_to_target": float(np.mean([r.reward_queries for r in reached])),
        "gain_final": float(np.mean(gain)),
        "accuracy_start": float(np.mean([a[0] for a in accuracy])),
        "accuracy_final": float(np.mean([np.mean(a[-3:]) for a in accuracy])),
        "seconds_per_query": float(np.mean([m[-1]["wall_time_s"] / m[-1]["reward_queries"] for m in runs])),
    }


def pick_winner(rows: list[dict]) -> dict:
    """Most seeds reaching the target, then fewest queries to it, then the largest final gain."""
    return min(rows, key=lambda r: (-r["reached"], r["queries_to_target"], -r["gain_final"]))


def write_table(results: dict, out: Path) -> None:
    seeds = ", ".join(map(str, SWEEP_SEEDS))
    lines = [
        "# Sweep: each method's own settings",
        "",
        f"Command: `python -m benchmarks.sweep {' '.join(sys.argv[1:])}`  ",
        f"Seeds {seeds} (the benchmark's are others), {BUDGET} reward queries per run, evaluated every {EVAL_QUERIES} "
        "(or once an epoch, if longer) on the fixed evaluation set (32 images). Target (docs/benchmark/PROTOCOL.md): "
        f"the first evaluation that gains {DELTA} in the task reward over the run's start with prompt accuracy at "
        f"least {ACCURACY_KEPT:.0%} of the start. The winner (**bold**) reaches it on the most seeds, then with the "
        "fewest queries (the budget where censored), then with the largest final gain (mean of the last 3 "
        "evaluations minus the start, in the task reward).",
        "",
        "| family (tuned on) | method | setting | seeds reaching | queries to target | final gain | "
        "prompt accuracy start -> final | s / query |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family, methods in results.items():
        for method, data in methods.items():
            for row in data["rows"]:
                name = f"**{row['setting']}**" if row == data["winner"] else row["setting"]
                lines.append(
                    f"| {family} ({data['task']}) | {method} | {name} | {row['reached']}/{row['seeds']} | "
                    f"{row['queries_to_target']:.0f} | {row['gain_final']:+.3f} | {row['accuracy_start']:.3f} -> "
                    f"{row['accuracy_final']:.3f} | {row['seconds_per_query']:.3f} |"
                )
    atomic_write_text(out / "sweep.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "sweep.json", json.dumps(results, indent=1))


def main(args: Args) -> None:
    check_names(args.families, "families", "family")
    unknown = set(args.families) - set(GRID)
    if unknown:
        raise GenrlError(f"unknown --families {sorted(unknown)}; choose from {', '.join(GRID)}")
    jobs = [  # every configuration is checked before the first run starts
        (family, method, settings, _budgeted(base, settings, seed, args, family, method))
        for family in args.families
        for method, (base, grid) in GRID[family][1].items()
        for settings in grid
        for seed in SWEEP_SEEDS
    ]
    progress = Progress(len(jobs))
    runs: dict[tuple, list] = {}
    elsewhere = []
    for family, method, settings, cfg in reversed(jobs) if args.from_end else jobs:
        progress.start(cfg.run_name)
        try:
            runs.setdefault((family, method.name, json.dumps(settings)), []).append(run_to_completion(cfg))
        except RunDirInUse:
            elsewhere.append(cfg.run_name)
        progress.finish()
    if elsewhere:
        print(
            f"\n{len(elsewhere)} runs are being trained by another process ({', '.join(elsewhere)}); run this "
            "command again once they are done to write the table"
        )
        return
    if args.from_end:
        runs = {key: seeds[::-1] for key, seeds in reversed(runs.items())}  # the table's order, and the seeds'
    results: dict = {}
    for (family, method, settings), metrics in runs.items():
        task, settings = GRID[family][0], json.loads(settings)
        data = results.setdefault(family, {}).setdefault(method, {"task": task, "rows": []})
        data["rows"].append({"setting": setting_name(settings), "settings": settings, **score(metrics, task)})
    for methods in results.values():
        for data in methods.values():
            data["winner"] = pick_winner(data["rows"])
    write_table(results, args.output_dir)
    for family, methods in results.items():
        for method, data in methods.items():
            print(f"{family} / {method}: {data['winner']['setting']}")
    print(f"table: {args.output_dir / 'sweep.md'}")


def _budgeted(base: str, settings: dict, seed: int, args: Args, family: str, method: Method) -> TrainConfig:
    cfg = setting_config(base, settings)
    # A window (0, 5) is named 0-5: a directory name without spaces or brackets.
    slug = "_".join(f"{k}{'-'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in settings.items())
    name = f"{family}-{method.slug}-{slug}-seed{seed}"
    every = max(EVAL_QUERIES, cfg.samples_per_epoch)
    return budgeted(cfg, BUDGET, every, seed, args.output_dir / "runs" / name, args.device)


def cli() -> None:
    command_line(main, Args, __doc__)


if __name__ == "__main__":
    cli()
