"""The benchmark suite: RLCM against DDPO on equal terms, the RLCM paper's figures 4-8 on your machine.

    python -m benchmarks.run --suite shapes --output-dir bench     # embedded shapes models, 10 seeds, ~3 h, 2 CPUs
    python -m benchmarks.run --suite shapes --output-dir bench --quick        # about 12 min: JPEG tasks, 1 seed
    python -m benchmarks.run --suite paper --output-dir bench --device cuda   # Table 1 models and presets, GPUs

The protocol is docs/benchmark/PROTOCOL.md. Per task, every method trains from its preset (each method's own best
settings: benchmarks/sweep.py) for the same number of reward queries, on the benchmark seeds (never the sweep's),
and is scored every ``--eval-queries`` queries on a fixed evaluation set (the same prompts and noise for every
method and seed). Runs are resumable: the same command again skips the finished ones and continues an interrupted
one from its checkpoint, and a method added later joins the same results without the others running again. Then
the final LoRAs of the first seed are loaded into plain diffusers pipelines and evaluated at several step counts.
Written to the output dir:

    results.json       every run's metrics, every evaluation, and a ``summary`` per task (see ``summarise``)
    report.md          the headline table with 95% intervals, and the figures
    fig4_reward_vs_queries.png, fig5_reward_vs_wallclock.png (eval reward and prompt accuracy, mean and std band
    over seeds), fig6_inference_budget.png, fig7_lcm_steps.png, fig8_heldout.png, samples_<task>.png
"""

from __future__ import annotations

import os

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # e.g. "no LoRA keys for the text encoder" per load
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import dataclasses
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from benchmarks.evaluation import EvaluationSettings, evaluate_task
from benchmarks.methods import DDPO_PPO, METHODS, baseline_is_reference, lineup
from benchmarks.report import format_headline, write_outputs
from benchmarks.results_check import check_results
from benchmarks.runs import (
    Malformed,
    Progress,
    budgeted,
    check_counts,
    check_names,
    command_line,
    keep_grids,
    keep_target_checkpoint,
    read_json,
    run_directory,
    run_to_completion,
    untrained_evaluation,
)
from benchmarks.summary import summarise
from benchmarks.sweep import BUDGET, EVAL_QUERIES, SWEEP_SEEDS
from genrl.config import TrainConfig
from genrl.config_file import config_to_json
from genrl.errors import GenrlError
from genrl.models import resolve_model
from genrl.presets import PRESETS

BENCHMARK_SEEDS = range(10, 20)
"""The protocol's benchmark seeds (docs/benchmark/PROTOCOL.md); the sweep's are ``SWEEP_SEEDS``."""


@dataclass
class Args:
    suite: Literal["shapes", "paper"] = "shapes"
    """shapes: the embedded models on a CPU. paper: the paper's models and Table 1 hyperparameters (GPUs)."""
    output_dir: Path = Path("benchmark-results")
    quick: bool = False
    """compression and incompression, RLCM and DDPO, one seed (the first benchmark seed), half the budget (512 reward
    queries), the final models at their training horizons only: about 12 min on a 2-core CPU (the full run's seed-10
    runs took 8.4 min to 512 queries with their evaluations)."""
    seeds: int | None = None
    """Seeds per method, from the first benchmark seed (10) on (default 10, quick 1): never the sweep's (0, 1)."""
    queries: int | None = None
    """Reward queries per run, the same for every method (default shapes: 1024, quick 512; paper: DDPO's preset)."""
    eval_queries: int | None = None
    """Reward queries between evaluations (default shapes: 64, or once an epoch where an epoch is longer; paper:
    1/20 of the budget)."""
    tasks: tuple[str, ...] | None = None
    """Default shapes: compression, incompression, alignment (quick: the first two); paper: also aesthetic."""
    eval_images: int | None = None
    """Images per point of the final models' evaluation (inference budget, steps, held-out prompts; default 32,
    quick 16)."""
    contenders: bool = True
    """Train the contender (Flow-GRPO, on the flow model) beside RLCM and DDPO; ``--no-contenders`` leaves it out
    (the paper suite then needs no Stable Diffusion 3.5)."""
    device: str = "cpu"
    report_only: bool = False
    """Train nothing: recompute the summaries, figures and report from ``output_dir/results.json``."""


# --------------------------------------------------------------------------------------------------
# What runs
# --------------------------------------------------------------------------------------------------
def method_configs(args: Args, task: str) -> dict[str, TrainConfig]:
    """Method name -> its preset for one task, for the methods of its ``lineup``."""
    return {m.name: m.config(args.suite, task) for m in lineup(args.suite, task, args.quick, args.contenders)}


def reference_only(args: Args, task: str, name: str) -> bool:
    """Whether the method ``name`` is only evaluated untrained on ``task``."""
    return METHODS[name].role == "baseline" and baseline_is_reference(args.suite, task)


def run_config(args: Args, task: str, name: str, cfg: TrainConfig, seed: int) -> TrainConfig:
    """One run's config: the task's budget, evaluated (and checkpointed) every ``eval_queries`` or once an epoch
    where an epoch is longer."""
    queries, every = budget(args, task)
    run_dir = run_directory(args.output_dir, task, METHODS[name].slug, seed)
    composite = seed == benchmark_seeds(args)[0]  # the sample composite's run keeps its checkpoint at the target
    return budgeted(cfg, queries, max(every, cfg.samples_per_epoch), seed, run_dir, args.device, composite)


def benchmark_seeds(args: Args) -> list[int]:
    """The runs' seeds: from ``BENCHMARK_SEEDS[0]`` on, disjoint from the sweep's."""
    count = _given(args.seeds, 1 if args.quick else len(BENCHMARK_SEEDS))
    return list(range(BENCHMARK_SEEDS[0], BENCHMARK_SEEDS[0] + count))


def budget(args: Args, task: str) -> tuple[int, int]:
    """Reward queries per run and between evaluations. The shapes suite's: the protocol's (the sweep's own), half of
    it in a quick run. The paper suite's default: DDPO's preset budget for both methods, evaluated 20 times."""
    if args.suite == "shapes":
        return _given(args.queries, BUDGET // 2 if args.quick else BUDGET), _given(args.eval_queries, EVAL_QUERIES)
    ddpo = DDPO_PPO.config(args.suite, task)
    queries = _given(args.queries, ddpo.epochs * ddpo.samples_per_epoch)
    return queries, _given(args.eval_queries, max(ddpo.samples_per_epoch, queries // 20))


def _given(value: int | None, default: int) -> int:
    # Not ``value or default``: that would read a 0 as the default (check_flags rejects it before this).
    return default if value is None else value


def suite_tasks(args: Args) -> tuple[str, ...]:
    """The tasks to run: ``--tasks``, or the suite's default; each one the suite has presets for."""
    if args.suite == "paper":
        tasks = args.tasks or ("compression", "incompression", "aesthetic", "alignment")
    else:
        tasks = args.tasks or (
            ("compression", "incompression") if args.quick else ("compression", "incompression", "alignment")
        )
    prefix = "shapes-rlcm-" if args.suite == "shapes" else "rlcm-"
    known = [name.removeprefix(prefix) for name in PRESETS if name.startswith(prefix)]
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise GenrlError(f"unknown --tasks {unknown} for the {args.suite} suite; choose from {', '.join(known)}")
    return tasks


# --------------------------------------------------------------------------------------------------
# Checks before any work
# --------------------------------------------------------------------------------------------------
def check_flags(args: Args) -> None:
    """Bad flags end the command before anything is read, trained or written."""
    check_counts(args, "seeds", "queries", "eval_queries", "eval_images")
    check_names(args.tasks, "tasks", "task")
    images = args.eval_images
    if images is not None and images > 8 and images % 8:
        # The evaluation samples batches of min(8, images) and drops a remainder: the report would claim more.
        raise GenrlError(
            f"--eval-images must be at most 8 or a multiple of 8, got {images}: pass {images // 8 * 8} or "
            f"{images // 8 * 8 + 8}"
        )


def check_paper_requirements(args: Args) -> None:
    """The paper suite needs the hub checkpoints locally, a GPU and (alignment) the reward server."""
    from huggingface_hub import try_to_load_from_cache

    methods = lineup("paper", "compression", args.quick, args.contenders)
    models = sorted({method.config("paper", "compression").model for method in methods})
    missing = [
        f"{model} (not in the Hugging Face cache)"
        for model in models
        if not isinstance(try_to_load_from_cache(model, "model_index.json"), str)
    ]
    if not args.device.startswith("cuda") or not torch.cuda.is_available():
        missing.append("a CUDA GPU (--device cuda); the paper used 4 RTX A6000")
    if missing:
        raise GenrlError(
            "the paper suite cannot run here: "
            + "; ".join(missing)
            + f". It needs {', '.join(models)} in the Hugging Face cache, GPUs, "
            "and for alignment `python -m genrl.rewards.serve --reward vlm_bertscore --port 8000`"
        )


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def report_only(args: Args) -> None:
    path = args.output_dir / "results.json"
    if not path.is_file():
        raise GenrlError(f"--report-only needs {path}: pass the --output-dir of a finished benchmark run")
    fix = (
        f"restore it, or delete it and rerun the benchmark's command into {args.output_dir} without --report-only "
        "(its finished runs are read back, not trained again)"
    )
    results = read_json(path, fix)
    try:
        check_results(results)
    except Malformed as exc:
        raise GenrlError(f"{path} does not hold a benchmark's results: {exc}; {fix}") from None
    for task, data in results["tasks"].items():
        data["summary"] = summarise(task, data, results["meta"]["seeds"])
    write_outputs(results, args.output_dir)
    print(f"report: {args.output_dir / 'report.md'}")


def main(args: Args) -> None:
    check_flags(args)
    if args.report_only:
        return report_only(args)
    args = dataclasses.replace(args, eval_images=_given(args.eval_images, 16 if args.quick else 32))
    seeds = benchmark_seeds(args)
    if args.suite == "paper":
        check_paper_requirements(args)
    tasks = suite_tasks(args)
    out = args.output_dir
    methods = {task: method_configs(args, task) for task in tasks}
    budgets = {task: budget(args, task) for task in tasks}
    jobs = [  # every configuration is checked before the first run starts
        (task, name, run_config(args, task, name, cfg, seed))
        for task in tasks
        for seed in seeds  # seed by seed: an interrupted suite has whole pairs
        for name, cfg in methods[task].items()
    ]
    # A shapes model still to be built ends the command here, not mid-suite.
    for model, env in sorted({(cfg.model, cfg.env) for _, _, cfg in jobs}):
        resolve_model(model, env)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(jobs))
    settings = EvaluationSettings(args.device, args.eval_images, args.quick)
    results: dict = {"tasks": {}}
    for task in tasks:  # a task's results are written as soon as its runs are done: a long suite reports as it goes
        data = results["tasks"][task] = {"runs": {}, "configs": {}, "evaluation": {}}
        for _, name, cfg in (job for job in jobs if job[0] == task):
            progress.start(f"{cfg.run_name}: {cfg.epochs * cfg.samples_per_epoch} reward queries")
            run = untrained_evaluation if reference_only(args, task, name) else run_to_completion
            metrics = run(cfg)
            keep_grids(cfg.output_dir / cfg.run_name, metrics, task)
            if cfg.seed == seeds[0]:
                keep_target_checkpoint(cfg.output_dir / cfg.run_name, metrics, task)
            data["runs"].setdefault(name, []).append(metrics)
            data["configs"][name] = config_to_json(methods[task][name])
            progress.finish()
        print(f"\n== evaluating the final models of {task}", flush=True)
        evaluate_task(task, data, methods[task], seeds[0], settings, out)
        data["summary"] = summarise(task, data, seeds)
        results["meta"] = {
            "suite": args.suite,
            "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "protocol": "docs/benchmark/PROTOCOL.md",
            "seeds": seeds,
            "sweep_seeds": list(SWEEP_SEEDS),
            "queries": {t: budgets[t][0] for t in results["tasks"]},
            "eval_queries": {t: budgets[t][1] for t in results["tasks"]},
            "eval_images": args.eval_images,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "total_s": time.perf_counter() - progress.began,
        }
        write_outputs(results, out)
        print(f"{task}: {format_headline(data['summary'])}", flush=True)
    print(f"\nreport: {out / 'report.md'}  ({(time.perf_counter() - progress.began) / 60:.1f} min)")


def cli() -> None:
    command_line(main, Args, __doc__)


if __name__ == "__main__":
    cli()
