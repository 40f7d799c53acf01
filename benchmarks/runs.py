"""Training runs for the benchmark suite and the sweep: budgets in reward queries, and resumable.

Each run lives in ``OUT/runs/NAME``, a genrl run directory that checkpoints at every evaluation; when it ends, its
logged metrics go to ``NAME/finished.json``. Running the same command again skips finished runs and continues an
interrupted one from its latest checkpoint, so a suite longer than one sitting completes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.ratios import bootstrap_ci, final_reward
from genrl.config import TrainConfig, config_to_json, read_config
from genrl.errors import GenrlError
from genrl.rundir import atomic_write_text
from genrl.train import train


def budgeted(cfg: TrainConfig, queries: int, eval_queries: int, seed: int, run_dir: Path, device: str) -> TrainConfig:
    """``cfg`` trained for ``queries`` reward queries, evaluated (and checkpointed) every ``eval_queries``."""
    per_epoch = cfg.samples_per_epoch
    if queries % per_epoch or eval_queries % per_epoch:
        raise GenrlError(
            f"the budget of {queries} queries, evaluated every {eval_queries}, must be whole epochs of {cfg.preset}'s "
            f"{per_epoch} samples; pick multiples of {per_epoch}"
        )
    cfg = dataclasses.replace(
        cfg,
        seed=seed,
        epochs=queries // per_epoch,
        eval_every=eval_queries // per_epoch,
        save_every=eval_queries // per_epoch,
        keep_checkpoints=1,
        log_images_every=10**9,  # the evaluation grids are the pictures to look at
        time_budget_s=None,
        output_dir=run_dir.parent,
        run_name=run_dir.name,
        device=device,
    )
    cfg.validate()
    return cfg


def run_to_completion(cfg: TrainConfig) -> list[dict]:
    """The run's logged metrics: read if it finished before, else trained, resuming whatever it had done."""
    run_dir = cfg.output_dir / cfg.run_name
    if (run_dir / "config.json").is_file():
        saved = dataclasses.replace(read_config(run_dir / "config.json"), resume=None)
        if config_to_json(saved) != config_to_json(cfg):
            raise GenrlError(
                f"{run_dir} holds a run with other settings than this command's; delete it, or pass another "
                "--output-dir"
            )
        cfg = dataclasses.replace(cfg, resume=run_dir)
    return _once(run_dir, lambda: train(cfg).read_metrics())


def untrained_evaluation(cfg: TrainConfig) -> list[dict]:
    """A method that is only a reference: its untrained model on the evaluation set, kept like a finished run."""
    from genrl.train import build, starting_evaluation

    return _once(cfg.output_dir / cfg.run_name, lambda: [starting_evaluation(build(cfg))[0]])


def _once(run_dir: Path, produce: Callable[[], list[dict]]) -> list[dict]:
    """The metrics in ``run_dir/finished.json``; if there are none yet, ``produce`` them and write them there."""
    finished = run_dir / "finished.json"
    if finished.is_file():
        return json.loads(finished.read_text())["metrics"]
    metrics = produce()
    finished.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(finished, json.dumps({"metrics": metrics}))
    return metrics


class Progress:
    """Prints runs done out of the total and the time elapsed before each run starts."""

    def __init__(self, total: int):
        self.total, self.done, self.began = total, 0, time.perf_counter()

    def start(self, name: str) -> None:
        minutes = (time.perf_counter() - self.began) / 60
        print(f"\n== [{self.done}/{self.total} runs done, {minutes:.1f} min] {name}", flush=True)

    def finish(self) -> None:
        self.done += 1


def evaluations(metrics: list[dict], key: str = "eval_reward_mean") -> tuple[list[float], list[float], list[float]]:
    """A run's evaluation curve: reward queries, training wall-clock and ``key`` at each evaluation."""
    points = [m for m in metrics if key in m]
    return [m["reward_queries"] for m in points], [m["wall_time_s"] for m in points], [m[key] for m in points]


def start_and_end(runs: list[list[dict]], key: str) -> dict | None:
    """Mean over seeds of the untrained model's ``key`` and of the final one (last 3 evaluations); the gain from
    each run's own start, with a bootstrap 95% interval over seeds. None where no run logged ``key``."""
    ys = [evaluations(m, key)[2] for m in runs]
    if not all(ys):
        return None
    gains = [final_reward(y) - y[0] for y in ys]
    return {
        "start": float(np.mean([y[0] for y in ys])),
        "end": float(np.mean([final_reward(y) for y in ys])),
        "gain": float(np.mean(gains)),
        "gain_ci95": list(bootstrap_ci(gains)),
    }


def cpu_per_wall(metrics: list[dict]) -> float:
    """Process CPU seconds per training wall-clock second: lower than its peers when other work took the cores."""
    last = metrics[-1]
    if not last["wall_time_s"]:
        return float("nan")  # not trained
    return last.get("cpu_time_s", float("nan")) / last["wall_time_s"]


def command_line(main: Callable, args_type: type, description: str) -> None:
    """Runs ``main`` on the parsed flags: quiet model loading, and one ``error:`` line (exit 2) for bad input."""
    import diffusers
    import transformers
    import tyro

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    try:
        main(tyro.cli(args_type, description=description))
    except GenrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
