"""The benchmark suite: RLCM against DDPO on equal terms, the RLCM paper's figures 4-8 on your machine.

    python -m benchmarks.run --suite shapes --output-dir bench      # embedded shapes models, ~60 min on 2 CPU cores
    python -m benchmarks.run --suite shapes --output-dir bench --quick                              # ~10 min
    python -m benchmarks.run --suite paper --output-dir bench --device cuda   # Table 1 models and presets, GPUs

Per task, every method trains from its preset for the same wall-clock budget (``--time-budget-s``), for several
seeds; then the final LoRAs are loaded into plain diffusers pipelines and evaluated. Written to the output dir:

    results.json       every training curve, every evaluation, and a ``summary`` per task (see ``summarise``)
    report.md          the headline table and the figures
    fig4_reward_vs_queries.png, fig5_reward_vs_wallclock.png, fig6_inference_budget.png,
    fig7_lcm_steps.png, fig8_heldout.png, samples_<task>.png (base and fine-tuned, both methods)

Curves are the per-epoch batch reward, smoothed over 3 epochs, averaged over seeds (shaded: one std).
"""

from __future__ import annotations

import os

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # e.g. "no LoRA keys for the text encoder" per load
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import dataclasses
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

from genrl.config import PRESETS, TrainConfig, config_to_json
from genrl.envs import make_env
from genrl.errors import GenrlError
from genrl.models import load_pipeline
from genrl.policy import make_policy
from genrl.prompts import load_prompts
from genrl.rewards import load_reward
from genrl.rollout import SamplingBatch, collect
from genrl.rundir import image_grid
from genrl.train import train

SMOOTHING = 3
"""Epochs in the moving average of the reward curves."""


@dataclass
class Args:
    suite: Literal["shapes", "paper"] = "shapes"
    """shapes: the embedded models on a CPU. paper: the paper's models and Table 1 hyperparameters (GPUs)."""
    output_dir: Path = Path("benchmark-results")
    quick: bool = False
    """Fewer seeds, methods and seconds: a check that everything runs (~10 min on a 2-core CPU)."""
    seeds: int | None = None
    """Seeds per method (default: 2, quick 1)."""
    time_budget_s: float | None = None
    """Training wall-clock per run (default shapes: 130 s, quick 40 s; paper: 8 GPU hours)."""
    tasks: tuple[str, ...] | None = None
    """Default shapes: compression, incompression, alignment; paper: also aesthetic."""
    eval_images: int = 32
    """Images per evaluation point (inference budget, steps, held-out prompts)."""
    device: str = "cpu"
    report_only: bool = False
    """Train nothing: recompute the summaries, figures and report from ``output_dir/results.json``."""


# --------------------------------------------------------------------------------------------------
# What runs
# --------------------------------------------------------------------------------------------------
def method_configs(args: Args, task: str) -> dict[str, TrainConfig]:
    """Method name -> its training configuration for one task. RLCM (PPO) and DDPO (PPO) always; REINFORCE on
    the LCM, and DPG where the reward is differentiable, on the shapes suite."""
    if args.suite == "paper":
        return {"RLCM (PPO)": PRESETS[f"rlcm-{task}"], "DDPO (PPO)": PRESETS[f"ddpo-{task}"]}
    rlcm, ddpo = PRESETS[f"shapes-rlcm-{task}"], PRESETS[f"shapes-ddpo-{task}"]
    methods = {"RLCM (PPO)": rlcm, "DDPO (PPO)": ddpo}
    if not args.quick:
        methods["RLCM (REINFORCE)"] = dataclasses.replace(rlcm, algo="reinforce")
    if load_reward(rlcm.reward).differentiable:
        # Reward backpropagation takes far larger steps per query than a policy gradient: a smaller lr.
        methods["RLCM (DPG)"] = dataclasses.replace(rlcm, algo="dpg", learning_rate=1e-3)
    return methods


def run_training(cfg: TrainConfig, out: Path, name: str, seed: int, budget: float, device: str) -> list[dict]:
    cfg = dataclasses.replace(
        cfg,
        seed=seed,
        epochs=100_000,
        time_budget_s=budget,
        output_dir=out,
        run_name=name,
        device=device,
        save_every=100_000,  # only the final checkpoint
        log_images_every=100_000,
    )
    run = train(cfg)
    return run.read_metrics()


# --------------------------------------------------------------------------------------------------
# Evaluation of a final checkpoint, loaded the way a user loads it
# --------------------------------------------------------------------------------------------------
class Evaluator:
    def __init__(self, cfg: TrainConfig, lora: Path | None, device: str, num_images: int):
        self.cfg, self.num_images = cfg, num_images
        self.pipe = load_pipeline(cfg.model, cfg.env, device)
        if lora is not None:
            self.pipe.load_lora_weights(lora)
        self.reward = load_reward(cfg.reward)
        self.policy = make_policy(cfg.env, self.pipe, cfg.guidance_scale, cfg.logprob_reduction, cfg.eta).eval()

    def sample(self, num_steps: int, prompts: list[str], seed: int = 12345):
        """Mean reward and seconds per image (sampling and decode) on ``num_images`` prompts from the list."""
        rng = np.random.default_rng(seed)
        chosen = [prompts[i] for i in rng.integers(len(prompts), size=self.num_images)]
        batch = min(8, self.num_images)
        env = make_env(self.cfg.env, batch, self.pipe, self.reward, num_steps)
        collect(env, self.policy, SamplingBatch(chosen[:batch], seed, seed))  # warm-up
        rewards, seconds, images = [], 0.0, []
        for start in range(0, len(chosen) - batch + 1, batch):
            rollout = collect(
                env, self.policy, SamplingBatch(chosen[start : start + batch], seed + start, seed - start)
            )
            rewards.append(rollout.rewards)
            seconds += rollout.sample_time_s
            images.append(rollout.images)
        count = sum(len(r) for r in rewards)
        return torch.cat(rewards).mean().item(), seconds / count, torch.cat(images)


def evaluation_steps(cfg: TrainConfig) -> list[int]:
    """Inference steps swept for the budget figure: the LCM's H, or DDIM steps up to the training horizon."""
    if cfg.env == "lcm":
        return sorted({2, 4, 8, cfg.num_steps})
    return sorted({max(2, cfg.num_steps // 4), max(2, cfg.num_steps // 2), cfg.num_steps})


def evaluate_method(cfg: TrainConfig, lora: Path | None, args: Args) -> dict:
    evaluator = Evaluator(cfg, lora, args.device, args.eval_images)
    trained = load_prompts(cfg.prompts)
    sweep = {}
    for steps in evaluation_steps(cfg):
        reward, seconds, _ = evaluator.sample(steps, trained)
        sweep[str(steps)] = {"reward": reward, "seconds_per_image": seconds}
    result: dict = {"steps": sweep}
    if cfg.prompts == "shapes_train":
        result["heldout_reward"] = evaluator.sample(cfg.num_steps, load_prompts("shapes_heldout"))[0]
        result["trained_reward"] = sweep[str(cfg.num_steps)]["reward"]
    grid_prompts = trained[:: max(1, len(trained) // 8)][:8]
    result["_images"] = evaluator.sample(cfg.num_steps, grid_prompts, seed=7)[2][:8]
    result["_prompts"] = grid_prompts
    return result


# --------------------------------------------------------------------------------------------------
# Curves and the headline ratios
# --------------------------------------------------------------------------------------------------
def smooth(values: list[float], window: int = SMOOTHING) -> np.ndarray:
    """Trailing moving average (the first points average what there is)."""
    v = np.asarray(values, dtype=float)
    cumulative = np.cumsum(np.insert(v, 0, 0.0))
    counts = np.minimum(np.arange(1, len(v) + 1), window)
    return (cumulative[1:] - cumulative[np.arange(1, len(v) + 1) - counts]) / counts


def mean_curve(runs: list[list[dict]], x_key: str, points: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smoothed reward against ``x_key``, interpolated on a common grid up to the shortest run; mean and std."""
    end = min(run[-1][x_key] for run in runs)
    start = max(run[0][x_key] for run in runs)
    grid = np.linspace(start, end, points) if end > start else np.array([end])
    curves = [np.interp(grid, [m[x_key] for m in run], smooth([m["reward_mean"] for m in run])) for run in runs]
    return grid, np.mean(curves, axis=0), np.std(curves, axis=0)


def first_reach(x: np.ndarray, y: np.ndarray, target: float) -> float | None:
    hits = np.nonzero(y >= target)[0]
    return float(x[hits[0]]) if len(hits) else None


def initial_reward(runs: list[list[dict]]) -> float:
    """Mean over seeds of the first ``SMOOTHING`` epochs' reward (one epoch's mean is too noisy a start)."""
    return float(np.mean([np.mean([m["reward_mean"] for m in run[:SMOOTHING]]) for run in runs]))


def final_reward(runs: list[list[dict]]) -> float:
    """Mean over seeds of the last ``SMOOTHING`` epochs' reward."""
    return float(np.mean([np.mean([m["reward_mean"] for m in run[-SMOOTHING:]]) for run in runs]))


def speedup(slow: list[list[dict]], fast: list[list[dict]], x_key: str, start: float) -> float | None:
    """``slow``'s x to reach 90% of its own gain over ``start``, over ``fast``'s x to reach the same reward.
    None where ``slow`` gains nothing or ``fast`` never gets there."""
    target = start + 0.9 * (final_reward(slow) - start)
    if not final_reward(slow) > start:
        return None
    x_slow, y_slow, _ = mean_curve(slow, x_key)
    x_fast, y_fast, _ = mean_curve(fast, x_key)
    t_slow, t_fast = first_reach(x_slow, y_slow, target), first_reach(x_fast, y_fast, target)
    if t_slow is None or t_fast is None or t_fast <= 0:
        return None
    return t_slow / t_fast


def summarise(task_result: dict) -> dict:
    """The headline numbers of one task.

    ``train_speedup``: DDPO's wall-clock to reach 90% of its own gain over the shared starting reward (the mean
    of both methods' ``initial_reward``), divided by RLCM's wall-clock to reach the same reward; null if RLCM
    never does (or DDPO gains nothing). ``query_efficiency``: the same in reward queries. ``inference_speedup``:
    seconds per image of DDPO's sampler over RLCM's, at their training horizons. ``dpg_query_efficiency``
    (where DPG ran): PPO's reward queries to reach 90% of its gain over RLCM's start, over DPG's.
    """
    curves = task_result["curves"]
    rlcm, ddpo = curves["RLCM (PPO)"], curves["DDPO (PPO)"]
    start = (initial_reward(rlcm) + initial_reward(ddpo)) / 2
    evals = task_result["evaluation"]
    rlcm_cfg, ddpo_cfg = task_result["configs"]["RLCM (PPO)"], task_result["configs"]["DDPO (PPO)"]
    rlcm_time = evals["RLCM (PPO)"]["steps"][str(rlcm_cfg["num_steps"])]["seconds_per_image"]
    ddpo_time = evals["DDPO (PPO)"]["steps"][str(ddpo_cfg["num_steps"])]["seconds_per_image"]
    summary = {
        "starting_reward": start,
        "train_speedup": speedup(ddpo, rlcm, "wall_time_s", start),
        "query_efficiency": speedup(ddpo, rlcm, "reward_queries", start),
        "inference_speedup": ddpo_time / rlcm_time,
        "final_reward": {name: final_reward(runs) for name, runs in curves.items()},
        "initial_reward": {name: initial_reward(runs) for name, runs in curves.items()},
    }
    if "RLCM (DPG)" in curves:
        summary["dpg_query_efficiency"] = speedup(rlcm, curves["RLCM (DPG)"], "reward_queries", initial_reward(rlcm))
    return summary


# --------------------------------------------------------------------------------------------------
# Figures and report
# --------------------------------------------------------------------------------------------------
def plot_curves(results: dict, x_key: str, xlabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, runs in results["tasks"][task]["curves"].items():
            x, mean, std = mean_curve(runs, x_key)
            ax.plot(x, mean, label=name)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_title(task)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_evaluations(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    # Fig. 6: reward against inference time per image, the final models at several step counts.
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name in ("RLCM (PPO)", "DDPO (PPO)"):
            sweep = results["tasks"][task]["evaluation"][name]["steps"]
            xs = [v["seconds_per_image"] for v in sweep.values()]
            ys = [v["reward"] for v in sweep.values()]
            ax.plot(xs, ys, "o-", label=name)
            for steps, x, y in zip(sweep, xs, ys):
                ax.annotate(steps, (x, y), fontsize=7)
        ax.set_title(task)
        ax.set_xlabel("seconds per image")
        ax.set_ylabel("reward of the final model")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fig6_inference_budget.png", dpi=110)
    plt.close(fig)

    # Fig. 7: RLCM's reward and inference time against the number of LCM steps H.
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sweep = results["tasks"][task]["evaluation"]["RLCM (PPO)"]["steps"]
        hs = [int(h) for h in sweep]
        ax.plot(hs, [v["reward"] for v in sweep.values()], "o-", color="C0")
        ax.set_xlabel("LCM steps H")
        ax.set_ylabel("reward", color="C0")
        twin = ax.twinx()
        twin.plot(hs, [v["seconds_per_image"] for v in sweep.values()], "s--", color="C1")
        twin.set_ylabel("seconds per image", color="C1")
        ax.set_title(task)
    fig.tight_layout()
    fig.savefig(out / "fig7_lcm_steps.png", dpi=110)
    plt.close(fig)

    # Fig. 8: reward on trained and held-out prompts.
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        evals = results["tasks"][task]["evaluation"]
        names = [n for n in evals if evals[n].get("heldout_reward") is not None]
        xs = np.arange(len(names))
        ax.bar(xs - 0.2, [evals[n]["trained_reward"] for n in names], 0.4, label="trained prompts")
        ax.bar(xs + 0.2, [evals[n]["heldout_reward"] for n in names], 0.4, label="held-out prompts")
        ax.set_xticks(xs, [n.replace(" ", "\n", 1) for n in names], fontsize=7)
        ax.set_title(task)
        ax.set_ylabel("reward of the final model")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fig8_heldout.png", dpi=110)
    plt.close(fig)


def _fmt(value: float | None, why_none: str) -> str:
    return f"n/a ({why_none})" if value is None else f"{value:.2f}"


def _start_to_end(summary: dict, name: str) -> str:
    return f"{summary['initial_reward'][name]:.3f} -> {summary['final_reward'][name]:.3f}"


def write_report(results: dict, out: Path) -> None:
    meta = results["meta"]
    lines = [
        f"# genrl benchmark: {meta['suite']} suite",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}  ",
        f"Seeds: {meta['seeds']}, training budget per run: {meta['time_budget_s']:.0f} s, finished {meta['date']} "
        f"in {meta['total_s'] / 60:.1f} min.",
        "",
        "| task | train_speedup | query_efficiency | inference_speedup | reward RLCM (PPO) | reward DDPO (PPO) "
        "| other methods |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, data in results["tasks"].items():
        s = data["summary"]
        ddpo_gained = s["final_reward"]["DDPO (PPO)"] > s["starting_reward"]
        why = "RLCM never gets there" if ddpo_gained else "DDPO gains nothing"
        others = ", ".join(
            f"{n}: {_start_to_end(s, n)}" for n in s["final_reward"] if n not in ("RLCM (PPO)", "DDPO (PPO)")
        )
        if "dpg_query_efficiency" in s:
            ppo_gained = s["final_reward"]["RLCM (PPO)"] > s["initial_reward"]["RLCM (PPO)"]
            dpg_why = "DPG never gets there" if ppo_gained else "PPO gains nothing"
            others += f"; DPG query efficiency over PPO: {_fmt(s['dpg_query_efficiency'], dpg_why)}"
        lines.append(
            f"| {task} | {_fmt(s['train_speedup'], why)} | {_fmt(s['query_efficiency'], why)} | "
            f"{s['inference_speedup']:.2f} | {_start_to_end(s, 'RLCM (PPO)')} | {_start_to_end(s, 'DDPO (PPO)')} | "
            f"{others} |"
        )
    lines += [
        "",
        "Definitions: see `summarise` in `benchmarks/run.py`. Rewards are given as start -> end: the mean of the "
        f"first and of the last {SMOOTHING} epochs, averaged over seeds; the shared starting reward of the ratios "
        "is the mean of RLCM's and DDPO's starts. "
        "Figures 6-8 evaluate the final LoRA of seed 0, loaded into a plain diffusers pipeline, on "
        f"{meta['eval_images']} images per point; Fig. 7 samples the RLCM model trained at its preset's H at "
        "H = 2, 4, 8 (the paper trained one model per H).",
        "",
        "![reward vs queries](fig4_reward_vs_queries.png)",
        "![reward vs wall-clock](fig5_reward_vs_wallclock.png)",
        "![inference budget](fig6_inference_budget.png)",
        "![LCM steps](fig7_lcm_steps.png)",
        "![held-out prompts](fig8_heldout.png)",
        "",
        *[f"![samples {task}](samples_{task}.png)" for task in results["tasks"]],
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------------------------------
def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def check_paper_requirements(args: Args) -> None:
    """The paper suite needs the hub checkpoints locally, a GPU and (alignment) the reward server."""
    from huggingface_hub import try_to_load_from_cache

    missing = [
        f"{PRESETS[p].model} (not in the Hugging Face cache)"
        for p in ("rlcm-compression", "ddpo-compression")
        if not isinstance(try_to_load_from_cache(PRESETS[p].model, "model_index.json"), str)
    ]
    if not args.device.startswith("cuda") or not torch.cuda.is_available():
        missing.append("a CUDA GPU (--device cuda); the paper used 4 RTX A6000")
    if missing:
        raise GenrlError(
            "the paper suite cannot run here: "
            + "; ".join(missing)
            + ". It needs SimianLuo/LCM_Dreamshaper_v7 and Lykon/dreamshaper-7 in the Hugging Face cache, GPUs, "
            "and for alignment `python -m genrl.rewards.serve --reward vlm_bertscore --port 8000`"
        )


def write_outputs(results: dict, out: Path) -> None:
    """results.json, the figures and report.md, from results whose tasks carry their summaries."""
    results["summary"] = {task: data["summary"] for task, data in results["tasks"].items()}
    staged = out / "results.json.tmp"
    staged.write_text(json.dumps(results, indent=1))
    os.replace(staged, out / "results.json")  # a failed rewrite leaves the old results whole
    plot_curves(results, "reward_queries", "reward queries", out / "fig4_reward_vs_queries.png")
    plot_curves(results, "wall_time_s", "training wall-clock (s)", out / "fig5_reward_vs_wallclock.png")
    plot_evaluations(results, out)
    write_report(results, out)


def main(args: Args) -> None:
    began = time.perf_counter()
    if args.report_only:
        path = args.output_dir / "results.json"
        if not path.is_file():
            raise GenrlError(f"--report-only needs {path}: pass the --output-dir of a finished benchmark run")
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise GenrlError(f"{path} is not valid JSON ({exc}): rerun the benchmark into that folder") from None
        for data in results["tasks"].values():
            data["summary"] = summarise(data)
        write_outputs(results, args.output_dir)
        print(f"report: {args.output_dir / 'report.md'}")
        return
    seeds = args.seeds or (1 if args.quick else 2)
    if args.suite == "paper":
        check_paper_requirements(args)
        budget = args.time_budget_s or 8 * 3600.0
        tasks = args.tasks or ("compression", "incompression", "aesthetic", "alignment")
    else:
        budget = args.time_budget_s or (40.0 if args.quick else 130.0)
        tasks = args.tasks or ("compression", "incompression", "alignment")
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"tasks": {}}
    for task in tasks:
        methods = method_configs(args, task)
        task_result: dict = {"curves": {}, "evaluation": {}, "configs": {}}
        grid_rows, grid_captions = [], []
        for name, cfg in methods.items():
            slug = name.lower().replace(" ", "-").replace("(", "").replace(")", "")
            runs = []
            for seed in range(seeds):
                print(f"\n== {task} / {name} / seed {seed} ({budget:.0f} s)", flush=True)
                runs.append(run_training(cfg, out / "runs", f"{task}-{slug}-seed{seed}", seed, budget, args.device))
            task_result["curves"][name] = runs
            task_result["configs"][name] = config_to_json(cfg)
            if name in ("RLCM (PPO)", "DDPO (PPO)") or not args.quick:
                lora = out / "runs" / f"{task}-{slug}-seed0" / "checkpoints" / "latest"
                evaluation = evaluate_method(cfg, lora, args)
                if name in ("RLCM (PPO)", "DDPO (PPO)"):
                    base = evaluate_method(cfg, None, args)
                    grid_rows += [base.pop("_images"), evaluation["_images"]]
                    grid_captions += [f"{name} base: {p}" for p in base.pop("_prompts")]
                    grid_captions += [f"{name} tuned" for _ in evaluation["_prompts"]]
                    evaluation["base"] = {k: v for k, v in base.items() if not k.startswith("_")}
                task_result["evaluation"][name] = {k: v for k, v in evaluation.items() if not k.startswith("_")}
        image_grid(torch.cat(grid_rows), grid_captions, columns=8).save(out / f"samples_{task}.png")
        task_result["summary"] = summarise(task_result)
        results["tasks"][task] = task_result
        print(json.dumps({task: task_result["summary"]}, indent=1), flush=True)

    results["meta"] = {
        "suite": args.suite,
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "seeds": seeds,
        "time_budget_s": budget,
        "eval_images": args.eval_images,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "total_s": time.perf_counter() - began,
    }
    write_outputs(results, out)
    print(f"\nreport: {out / 'report.md'}  ({(time.perf_counter() - began) / 60:.1f} min)")


def cli() -> None:
    try:
        main(tyro.cli(Args, description=__doc__))
    except GenrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    cli()
