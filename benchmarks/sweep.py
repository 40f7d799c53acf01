"""``python -m benchmarks.sweep``: each method's own best settings on the shapes suite, found the same way.

    python -m benchmarks.sweep --output-dir docs/benchmark/sweep      # ~1 h on a 2-core CPU; resumable

Per task family (JPEG, tuned on compression; alignment) and method, a grid of learning rates (and DDPO's update
batch) trains for a short budget of reward queries on 2 seeds, judged on the fixed evaluation set. The winner is
the best final eval reward (mean of the last 3 evaluations, over seeds) among settings whose final prompt
accuracy stays at least ``KEEP_ACCURACY`` of the starting model's: a reward that rises while the shapes vanish is
reward hacking. Winners go into ``_SHAPES_SWEPT`` in genrl/config.py by hand; the table into
``OUT/sweep.md`` and ``OUT/sweep.json``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.methods import DDPO_PPO, RLCM_DPG, RLCM_PPO, Method
from benchmarks.runs import Progress, budgeted, check_counts, check_names, command_line, run_to_completion
from benchmarks.summary import start_and_end
from genrl.config import PRESETS, TrainConfig, replace_config
from genrl.errors import GenrlError
from genrl.rundir import atomic_write_text

KEEP_ACCURACY = 0.8
"""A setting qualifies if its final eval_prompt_accuracy is at least this fraction of the untrained model's."""

_LRS = (1e-4, 3e-4, 1e-3, 3e-3)
# Family -> method -> (base preset, settings tried). Every method's learning rates go up in steps of about 3 until
# the winner is not the largest one tried (the next one up loses its prompt accuracy or gains less): so DDPO also
# tries 1e-2, and PPO on alignment stops at 1e-3. DDPO's update batch: 32 or 64 of its 64 images an epoch
# (accumulating 4 or 8 minibatches of 8). REINFORCE is not swept: with one optimizer step per sampling round its update
# is PPO's (every ratio is 1, so nothing is clipped), and it takes PPO's winner.
GRID: dict[str, dict[Method, tuple[str, list[dict]]]] = {
    "jpeg": {
        RLCM_PPO: ("shapes-rlcm-compression", [{"learning_rate": lr} for lr in _LRS]),
        DDPO_PPO: (
            "shapes-ddpo-compression",
            [{"learning_rate": lr, "gradient_accumulation_steps": a} for lr in (*_LRS, 1e-2) for a in (4, 8)],
        ),
    },
    "alignment": {
        RLCM_PPO: ("shapes-rlcm-alignment", [{"learning_rate": lr} for lr in _LRS[:3]]),
        RLCM_DPG: (
            "shapes-rlcm-alignment",
            [{"learning_rate": lr, "algo": "dpg", "group_size": 1} for lr in _LRS],
        ),
    },
}


@dataclass
class Args:
    output_dir: Path = Path("sweep-results")
    families: tuple[str, ...] = ("jpeg", "alignment")
    seeds: int = 2
    queries: int = 320
    """Reward queries per run (the same for every method)."""
    eval_queries: int = 64
    """Reward queries between evaluations."""
    device: str = "cpu"


def setting_name(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("algo", "group_size"))


def score(runs: list[list[dict]]) -> dict:
    """Mean over seeds of the start and final eval reward and prompt accuracy."""
    reward, accuracy = start_and_end(runs, "eval_reward_mean"), start_and_end(runs, "eval_prompt_accuracy")
    return {
        "reward_start": reward["start"],
        "reward_final": reward["end"],
        "accuracy_start": accuracy["start"],
        "accuracy_final": accuracy["end"],
    }


def pick_winner(rows: list[dict]) -> dict:
    """The best final reward among rows that keep their accuracy; if none does, the one that keeps the most."""
    kept = [r for r in rows if r["accuracy_final"] >= KEEP_ACCURACY * r["accuracy_start"]]
    if kept:
        return max(kept, key=lambda r: r["reward_final"])
    return max(rows, key=lambda r: r["accuracy_final"] / max(r["accuracy_start"], 1e-9))


def write_table(results: dict, out: Path, args: Args) -> None:
    lines = [
        "# Sweep: each method's own settings",
        "",
        f"Command: `python -m benchmarks.sweep {' '.join(sys.argv[1:])}`  ",
        f"{args.seeds} seeds, {args.queries} reward queries per run, evaluated every {args.eval_queries} on the fixed "
        "evaluation set (32 images). Final = mean of the last 3 evaluations, averaged over seeds. A setting qualifies "
        f"if its final prompt accuracy is at least {KEEP_ACCURACY:.0%} of its start; the winner (**bold**) is the "
        "best final reward among those.",
        "",
        "| family | method | setting | eval reward start -> final | prompt accuracy start -> final | qualifies |",
        "|---|---|---|---|---|---|",
    ]
    for family, methods in results.items():
        for method, data in methods.items():
            for row in data["rows"]:
                name = row["setting"]
                if row == data["winner"]:
                    name = f"**{name}**"
                ok = row["accuracy_final"] >= KEEP_ACCURACY * row["accuracy_start"]
                lines.append(
                    f"| {family} | {method} | {name} | {row['reward_start']:.3f} -> {row['reward_final']:.3f} | "
                    f"{row['accuracy_start']:.3f} -> {row['accuracy_final']:.3f} | {'yes' if ok else 'no'} |"
                )
    atomic_write_text(out / "sweep.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "sweep.json", json.dumps(results, indent=1))


def main(args: Args) -> None:
    # Before any run: a count below 1 otherwise runs nothing and writes an empty table, or fails naming the preset's
    # --epochs, which this command has no flag for.
    check_counts(args, "seeds", "queries", "eval_queries")
    check_names(args.families, "families", "family")
    unknown = set(args.families) - set(GRID)
    if unknown:
        raise GenrlError(f"unknown --families {sorted(unknown)}; choose from {', '.join(GRID)}")
    jobs = [
        (family, method, base, settings, seed)
        for family in args.families
        for method, (base, grid) in GRID[family].items()
        for settings in grid
        for seed in range(args.seeds)
    ]
    progress = Progress(len(jobs))
    runs: dict[tuple, list] = {}
    for family, method, base, settings, seed in jobs:
        cfg: TrainConfig = replace_config(PRESETS[base], **settings)
        slug = "-".join(f"{v}" for v in settings.values())
        name = f"{family}-{method.family}-{cfg.algo}-{slug}-seed{seed}"
        progress.start(name)
        cfg = budgeted(cfg, args.queries, args.eval_queries, seed, args.output_dir / "runs" / name, args.device)
        runs.setdefault((family, method.name, setting_name(settings)), []).append(run_to_completion(cfg))
        progress.finish()
    results: dict = {}
    for (family, method, setting), metrics in runs.items():
        data = results.setdefault(family, {}).setdefault(method, {"rows": []})
        data["rows"].append({"setting": setting, **score(metrics)})
    for methods in results.values():
        for data in methods.values():
            data["winner"] = pick_winner(data["rows"])
    write_table(results, args.output_dir, args)
    for family, methods in results.items():
        for method, data in methods.items():
            print(f"{family} / {method}: {data['winner']['setting']}")
    print(f"table: {args.output_dir / 'sweep.md'}")


def cli() -> None:
    command_line(main, Args, __doc__)


if __name__ == "__main__":
    cli()
