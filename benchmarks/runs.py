"""Training runs for the benchmark suite and the sweep: budgets in reward queries, and resumable.

Each run lives in ``OUT/runs/NAME``, a genrl run directory that checkpoints at every evaluation; when it ends, its
logged metrics go to ``NAME/finished.json``, and the benchmark keeps its pictures of the fixed evaluation set where it
first met the target and at its end as ``NAME/target.png`` and ``NAME/end.png`` (with config.json, the files the
repository keeps of a run). Running the same command again skips finished runs and continues an interrupted one from
its latest checkpoint, so a suite longer than one sitting completes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.fidelity import ACCURACY_KEPT, evaluations, reach
from genrl.checkpoint import BEST, LATEST, checkpoint_name, point_link
from genrl.config import TrainConfig
from genrl.config_file import config_to_json, read_config
from genrl.errors import GenrlError
from genrl.rundir import atomic_write_bytes, atomic_write_text, sample_grid_name
from genrl.train import train

TARGET = "target"
"""The link, beside ``latest`` and ``best``, to the checkpoint where a run first met the target."""


def run_directory(output_dir: Path, task: str, method_slug: str, seed: int) -> Path:
    """Where the suite keeps a method's run of a task on one seed."""
    return output_dir / "runs" / f"{task}-{method_slug}-seed{seed}"


def budgeted(
    cfg: TrainConfig,
    queries: int,
    eval_queries: int,
    seed: int,
    run_dir: Path,
    device: str,
    every_checkpoint: bool = False,
) -> TrainConfig:
    """``cfg`` trained for ``queries`` reward queries, evaluated (and checkpointed) every ``eval_queries``; keeping
    the latest checkpoint and the best, or (``every_checkpoint``) all until ``keep_target_checkpoint`` picks."""
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
        keep_checkpoints=queries // per_epoch + 1 if every_checkpoint else 1,
        keep_best=True,  # the best checkpoint that keeps the picture, for the sample grids
        accuracy_floor=ACCURACY_KEPT,
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
        # A thread count the run chose as it started is not a setting of this command's; the resume keeps it. How
        # many checkpoints stay on disk changes no number.
        compared = dataclasses.replace(saved, keep_checkpoints=cfg.keep_checkpoints)
        compared = dataclasses.replace(compared, threads=None) if cfg.threads is None else compared
        if config_to_json(compared) != config_to_json(cfg):
            raise GenrlError(
                f"{run_dir} holds a run with other settings than this command's; delete it, or pass another "
                "--output-dir"
            )
        cfg = dataclasses.replace(cfg, resume=run_dir, threads=saved.threads)
    return _once(run_dir, lambda: train(cfg).read_metrics())


def untrained_evaluation(cfg: TrainConfig) -> list[dict]:
    """A method that is only a reference: its untrained model on the evaluation set, kept like a finished run."""
    from genrl.train import build, starting_evaluation

    return _once(cfg.output_dir / cfg.run_name, lambda: [starting_evaluation(build(cfg))[0]])


def _once(run_dir: Path, produce: Callable[[], list[dict]]) -> list[dict]:
    """The metrics in ``run_dir/finished.json``; if there are none yet, ``produce`` them and write them there."""
    finished = run_dir / "finished.json"
    if finished.is_file():
        fix = f"restore it, or delete {run_dir} to run it again"
        try:
            return check_metrics(field(read_json(finished, fix), "metrics", "a list", ""), '["metrics"]')
        except Malformed as exc:
            raise GenrlError(f"{finished} does not hold a finished run's metrics: {exc}; {fix}") from None
    metrics = produce()
    finished.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(finished, json.dumps({"metrics": metrics}))
    return metrics


def keep_grids(run_dir: Path, metrics: list[dict], task: str, into: Path | None = None) -> list[Path]:
    """``target.png``, the evaluation grid where the run first met the protocol's target (none where it never did),
    and ``end.png``, its last evaluation's: copied out of ``run_dir/samples/``, which is not committed, into ``into``
    (default ``run_dir``). The grids kept; none for a reference (its one evaluation is not saved as a picture)."""
    into = into or run_dir
    hit = reach(metrics, task)
    epochs = {"end": evaluations(metrics)[-1]["epoch"]}
    if not hit.censored:
        epochs["target"] = hit.epoch
    kept = []
    for name, epoch in sorted(epochs.items()):
        grid = run_dir / "samples" / sample_grid_name(epoch, "-eval")
        if grid.is_file() and epoch > 0:
            kept.append(into / f"{name}.png")
            atomic_write_bytes(kept[-1], grid.read_bytes())
    return kept


def keep_target_checkpoint(run_dir: Path, metrics: list[dict], task: str) -> None:
    """For the sample composite: ``checkpoints/target`` linked to the checkpoint of the evaluation where the run
    first met the target (a run ``budgeted`` with ``every_checkpoint`` has it), and the checkpoints that neither it,
    ``latest`` nor ``best`` name removed."""
    checkpoints = run_dir / "checkpoints"
    hit = reach(metrics, task)
    if not hit.censored and (checkpoints / checkpoint_name(hit.epoch)).is_dir():
        point_link(checkpoints / checkpoint_name(hit.epoch), TARGET)
    named = {(checkpoints / link).resolve() for link in (TARGET, LATEST, BEST) if (checkpoints / link).is_dir()}
    for folder in checkpoints.glob("epoch-*"):
        if folder.resolve() not in named:
            shutil.rmtree(folder)


class Progress:
    """Prints runs done out of the total and the time elapsed before each run starts."""

    def __init__(self, total: int):
        self.total, self.done, self.began = total, 0, time.perf_counter()

    def start(self, name: str) -> None:
        minutes = (time.perf_counter() - self.began) / 60
        print(f"\n== [{self.done}/{self.total} runs done, {minutes:.1f} min] {name}", flush=True)

    def finish(self) -> None:
        self.done += 1


# --------------------------------------------------------------------------------------------------
# Checks of the flags and of the files read back
# --------------------------------------------------------------------------------------------------
def check_counts(args: object, *names: str) -> None:
    """Each of ``args``' ``names`` at least 1 (or None: its default). Checked before anything else, because a
    default written ``value or default`` reads 0 as the default, and ``range`` of a negative count is empty."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise GenrlError(
                f"--{name.replace('_', '-')} must be at least 1, got {value}: pass a positive number, or leave it "
                "out for the default"
            )


def check_names(names: tuple[str, ...] | None, flag: str, what: str) -> None:
    """A list flag given (not None) names something, each once: an empty one would read as the default list, and a
    repeated name would run its jobs twice and count them as more seeds."""
    if names is None:
        return
    if not names:
        raise GenrlError(f"--{flag} names no {what}: list at least one, or leave it out for the default")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise GenrlError(f"--{flag} names {', '.join(twice)} twice: list each {what} once")


class Malformed(ValueError):
    """Where a JSON file departs from what the benchmark writes and what is wrong there; the caller names the file
    and the fix. ``where`` is a path of subscripts into the file, such as ``["tasks"]["compression"]``."""


def read_json(path: Path, fix: str) -> object:
    """``path``'s JSON value, or a ``GenrlError`` that says why there is none and ends in ``fix``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise GenrlError(f"cannot read {path} ({exc.strerror}): {fix}") from None
    except UnicodeDecodeError as exc:
        raise GenrlError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): {fix}") from None
    except json.JSONDecodeError as exc:
        raise GenrlError(f"{path} is not valid JSON ({exc}): {fix}") from None


def subscript(where: str, *keys: str | int) -> str:
    """``where`` (a path into a JSON file, "" its top level) followed by ``keys``, as Python would index them."""
    return where + "".join(f"[{json.dumps(key)}]" for key in keys)


def is_number(value: object) -> bool:
    # JSON's true and false load as bool, which Python counts as an int: never a number in these files. json.loads
    # reads NaN and Infinity too, which JSON has no numbers for: a NaN reward would reach the ratios as a curve that
    # never reaches its own target.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_KINDS: dict[str, Callable[[object], bool]] = {
    "an object": lambda v: isinstance(v, dict),
    "a list": lambda v: isinstance(v, list),
    "a string": lambda v: isinstance(v, str),
    "a number": is_number,
    "a positive number": lambda v: is_number(v) and v > 0,
    "a positive whole number": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
    "a whole number": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "true or false": lambda v: isinstance(v, bool),
    "a number or null": lambda v: v is None or is_number(v),
    "a list or null": lambda v: v is None or isinstance(v, list),
    "a string or null": lambda v: v is None or isinstance(v, str),
}


def describe(value: object) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {json.dumps(value[:40])}"
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # NaN, Infinity or -Infinity, as the file spells it
    return f"the number {value}"


def expect(value: object, kind: str, where: str) -> Any:
    if not _KINDS[kind](value):
        raise Malformed(f"{where or 'the top level'} should be {kind}, not {describe(value)}")
    return value


def field(record: dict, key: str, kind: str, where: str, optional: bool = False) -> Any:
    """``record[key]`` (``record`` at ``where``), which must be ``kind``; None when ``optional`` and absent."""
    expect(record, "an object", where)
    if key not in record:
        if optional:
            return None
        raise Malformed(f"{where or 'the top level'} has no {json.dumps(key)}")
    return expect(record[key], kind, subscript(where, key))


def check_metrics(metrics: object, where: str, evaluations_needed: int = 1) -> list[dict]:
    """``metrics`` (at ``where``) as a run's logged metrics that ``evaluations``, ``start_and_end`` and the
    summaries can read: records with numeric counters, evaluations with their std, at least ``evaluations_needed``
    of them (a trained run's curve has its start and end, which its ratios read)."""
    for i, record in enumerate(expect(metrics, "a list", where)):
        at = subscript(where, i)
        for key in ("reward_queries", "wall_time_s"):
            field(record, key, "a number", at)
        for key in ("cpu_time_s", "eval_reward_mean", "eval_reward_std", "eval_prompt_accuracy"):
            field(record, key, "a number", at, optional=True)
        if "eval_reward_mean" in record and "eval_reward_std" not in record:
            raise Malformed(f'{at} has "eval_reward_mean" but no "eval_reward_std"')
    found = sum("eval_reward_mean" in record for record in metrics)
    if found < evaluations_needed:
        raise Malformed(
            f'{where} has {found} evaluation{"" if found == 1 else "s"} (records with "eval_reward_mean"); a run '
            f"here has at least {evaluations_needed}"
        )
    return metrics


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
    except KeyboardInterrupt:
        print("interrupted; the same command again skips the finished runs and resumes this one", file=sys.stderr)
        raise SystemExit(130) from None
