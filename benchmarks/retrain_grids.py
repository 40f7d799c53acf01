"""Issue 41's pictures of the committed benchmark runs, whose checkpoints and samples were not kept: each run of the
given seeds is trained again from its committed config.json (the same seed and thread count) in ``--work-dir``, and
its evaluation grids where it first met the target and at its end are kept beside that config.json as ``target.png``
and ``end.png``. ``OUT/grids.json`` says, per run, whether the retrain reproduced the committed metrics (timings
aside) and where each met the target; a retrain that did not is said, not hidden. The first seed's runs keep their
checkpoint at the target, and ``OUT/samples_<task>.png`` is drawn again from them (``sample_composite``: untrained, at
the target, final, every method). Resumable like the suite: run again, it trains only what is missing.

    python -m benchmarks.retrain_grids --output-dir docs/benchmark --work-dir /tmp/retrain --seeds 10 11 12
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from benchmarks.evaluation import sample_composite
from benchmarks.fidelity import evaluations, reach
from benchmarks.methods import METHODS
from benchmarks.runs import (
    Progress,
    command_line,
    keep_grids,
    keep_target_checkpoint,
    read_json,
    run_directory,
    run_to_completion,
)
from genrl.config import TrainConfig
from genrl.config_file import read_config
from genrl.errors import GenrlError
from genrl.rundir import atomic_write_text

COST_ORDER = ("rlcm", "flow", "ddpo")
"""Cheapest method first (their slugs' first word), so that an interrupted retrain has whole methods."""


@dataclasses.dataclass
class Args:
    output_dir: Path = Path("docs/benchmark")
    """The benchmark's folder: its runs/ hold the committed config.json and finished.json of each run."""
    work_dir: Path = Path("retrain-work")
    """Where the runs train again (checkpoints and samples; not committed)."""
    seeds: tuple[int, ...] = (10, 11, 12)
    """The benchmark seeds whose runs are retrained."""
    methods: tuple[str, ...] = ()
    """Only the runs of these methods (their slugs in run names, such as ddpo-ppo); all when empty. Two commands
    with different methods can share the work."""


def without_timings(metrics: list[dict]) -> list[dict]:
    """What a seed reproduces: every logged value but the clocks."""
    timing = lambda key: key.endswith("_time_s") or key == "reward_wait_s"
    return [{k: v for k, v in record.items() if not timing(k)} for record in metrics]


def comparison(committed: list[dict], retrained: list[dict], task: str) -> dict:
    """Where the committed run and its retrain met the target and ended, and whether the retrain reproduced it."""
    first, again = reach(committed, task), reach(retrained, task)
    rewards = lambda metrics: [m["eval_reward_mean"] for m in evaluations(metrics)]
    return {
        "reproduced": without_timings(committed) == without_timings(retrained),
        "max_eval_reward_difference": max(abs(a - b) for a, b in zip(rewards(committed), rewards(retrained))),
        "committed_target_epoch": None if first.censored else first.epoch,
        "target_epoch": None if again.censored else again.epoch,
        "end_epoch": evaluations(retrained)[-1]["epoch"],
    }


def main(args: Args) -> None:
    runs = args.output_dir / "runs"
    cost = lambda name: next((i for i, method in enumerate(COST_ORDER) if f"-{method}-" in name), len(COST_ORDER))
    chosen = [
        folder.name
        for folder in runs.glob("*-seed*")
        if int(folder.name.rsplit("-seed", 1)[1]) in args.seeds
        and (not args.methods or any(f"-{slug}-seed" in folder.name for slug in args.methods))
    ]
    names = sorted(chosen, key=lambda name: (cost(name), name))
    if not names:
        raise GenrlError(f"{runs} has no runs of seeds {list(args.seeds)}: pass the benchmark's --output-dir")
    report_path = args.output_dir / "grids.json"
    fix = f"delete {report_path} to write it again"
    report = read_json(report_path, fix) if report_path.is_file() else {}
    progress = Progress(len(names))
    for name in names:
        progress.start(name)
        committed = read_json(runs / name / "finished.json", f"restore {runs / name} from git")["metrics"]
        if len(evaluations(committed)) < 2:  # a reference: its untrained model, no picture to keep
            progress.finish()
            continue
        task = name.split("-", 1)[0]
        cfg = dataclasses.replace(read_config(runs / name / "config.json"), output_dir=args.work_dir, resume=None)
        composite = name.endswith(f"-seed{args.seeds[0]}")
        if composite:  # every evaluation's checkpoint, for the sample composite at the target (no effect on numbers)
            cfg = dataclasses.replace(cfg, keep_checkpoints=cfg.epochs + 1)
        retrained = run_to_completion(cfg)
        if composite:
            keep_target_checkpoint(args.work_dir / name, retrained, task)
        kept = keep_grids(args.work_dir / name, retrained, task, into=runs / name)
        report[name] = {**comparison(committed, retrained, task), "grids": [p.name for p in kept]}
        atomic_write_text(report_path, json.dumps(report, indent=1, sort_keys=True) + "\n")
        print(f"{name}: {report[name]}", flush=True)
        progress.finish()
    for task in sorted({name.split("-", 1)[0] for name in names}):
        save_composite(task, args)


def save_composite(task: str, args: Args) -> None:
    """``OUT/samples_<task>.png`` from the retrained runs of the first seed: every method, in the suite's order."""
    methods: dict[str, TrainConfig] = {}
    checkpoints: dict[str, Path | None] = {}
    for method in METHODS.values():
        run = run_directory(args.output_dir, task, method.slug, args.seeds[0])
        if (run / "config.json").is_file():
            methods[method.name] = read_config(run / "config.json")
            folder = args.work_dir / run.name / "checkpoints"
            checkpoints[method.name] = folder if (folder / "latest").is_dir() else None  # None: the reference
    path = args.output_dir / f"samples_{task}.png"
    sample_composite(methods, checkpoints, next(iter(methods.values())).device, path)
    print(f"sample composite: {path}", flush=True)


if __name__ == "__main__":
    command_line(main, Args, __doc__)
