"""The headline numbers of a benchmark task, from its runs' evaluation curves (the ratios' maths: ``ratios``)."""

from __future__ import annotations

import numpy as np

from benchmarks.methods import DDPO_PPO, METHODS, PAPER_DDIM_STEPS, RLCM_DPG, RLCM_PPO
from benchmarks.ratios import bootstrap_ci, final_reward, first_reach, pair_ratio, summarise_pairs

CONTENDED = 0.8
"""A run is flagged when its CPU/wall ratio is below this fraction of the best of its method on the same task."""
RATIO_PARTS = ("ci95", "lower_bound", "why_none", "pairs", "left_out")
"""What ``summarise_pairs`` gives beside the value; a summary stores each as ``<key>_<part>``."""


def evaluations(metrics: list[dict], key: str = "eval_reward_mean") -> tuple[list[float], list[float], list[float]]:
    """A run's evaluation curve: reward queries, training wall-clock and ``key`` at each evaluation."""
    points = [m for m in metrics if key in m]
    return [m["reward_queries"] for m in points], [m["wall_time_s"] for m in points], [m[key] for m in points]


def curve(metrics: list[dict], x: str, key: str = "eval_reward_mean") -> tuple[list[float], list[float]]:
    """``key`` against ``x``: "reward_queries", or else training wall-clock."""
    queries, wall, y = evaluations(metrics, key)
    return (queries if x == "reward_queries" else wall), y


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


def ratio(slow: list[list[dict]], fast: list[list[dict]], x: str, slow_name: str, fast_name: str) -> dict:
    """Per seed pair, ``slow``'s x to its final eval reward over ``fast``'s x to the same; mean and 95% interval."""
    pairs = [pair_ratio(curve(s, x), curve(f, x), slow_name, fast_name) for s, f in zip(slow, fast)]
    return summarise_pairs(pairs)


def accuracy_at_target(pairs: list[dict], slow: list[list[dict]], fast: list[list[dict]]) -> dict | None:
    """Each method's prompt accuracy where it first reached its pair's target (interpolated in wall-clock), mean
    over the pairs measured: a reward reached by erasing the subject shows here. None without prompt accuracy."""
    measured = [(p, s, f) for p, s, f in zip(pairs, slow, fast) if p["value"] is not None]
    if not measured or not all(evaluations(run, "eval_prompt_accuracy")[2] for _, *runs in measured for run in runs):
        return None
    at = lambda run, x: float(np.interp(x, *curve(run, "wall_time_s", "eval_prompt_accuracy")))
    return {
        DDPO_PPO.name: float(np.mean([at(s, p["slow_x"]) for p, s, _ in measured])),
        RLCM_PPO.name: float(np.mean([at(f, p["fast_x"]) for p, _, f in measured])),
    }


def reaching(runs: list[list[dict]], target: float) -> dict:
    """When each seed first reaches ``target`` (reward queries and wall-clock); means over the seeds that do."""
    queries = [first_reach(*curve(m, "reward_queries"), target) for m in runs]
    wall = [first_reach(*curve(m, "wall_time_s"), target) for m in runs]
    reached = [i for i, q in enumerate(queries) if q is not None]
    return {
        "target": target,
        "seeds_reached": len(reached),
        "seeds": len(runs),
        "reward_queries": float(np.mean([queries[i] for i in reached])) if reached else None,
        "wall_time_s": float(np.mean([wall[i] for i in reached])) if reached else None,
    }


def gain_in_standard_errors(gain: float, runs: list[list[dict]], eval_size: int) -> float:
    """A mean eval-reward gain over the standard error of one evaluation's mean (its image std over the root of
    the set's size, at the start). For DDPO the ratios mean something from about 3 (the issue's criterion)."""
    starts = [next(m for m in r if "eval_reward_std" in m) for r in runs]
    standard_error = np.mean([m["eval_reward_std"] for m in starts]) / np.sqrt(eval_size)
    return float(gain / standard_error)


def contended_runs(runs: dict[str, list[list[dict]]]) -> list[dict]:
    """Runs whose CPU/wall ratio fell below ``CONTENDED`` of the best of their method: other work took cores."""
    flagged = []
    for method, seeds in runs.items():
        shares = [cpu_per_wall(m) for m in seeds]
        if any(np.isnan(shares)):
            continue  # not trained
        best = max(shares)
        for seed, share in enumerate(shares):
            if share < CONTENDED * best:
                flagged.append({"method": method, "seed": seed, "cpu_per_wall": share, "best_of_method": best})
    return flagged


def summarise(task: dict) -> dict:
    """The headline numbers of one task.

    ``train_speedup``: per seed pair, DDPO's training wall-clock to first reach its final eval reward (mean of its
    last 3 evaluations) over RLCM's to reach the same reward, interpolated between evaluations; the mean over
    pairs, ``_ci95`` a bootstrap 95% interval, ``_lower_bound`` where RLCM started past the target (then its first
    evaluation after updates is the divisor), ``_why_none`` where undefined, ``_left_out`` the pairs in which DDPO
    gained nothing but RLCM reached its reward (left out of the mean, see ``benchmarks.ratios``).
    ``query_efficiency``: the same in reward queries. ``prompt_accuracy_at_target``: each method's prompt accuracy
    where it reached the train_speedup target. ``eval_reward`` and ``eval_prompt_accuracy``: each method's start
    (the untrained model) and end at DDPO's query budget (RLCM's curve read up to there where it went on past it),
    and its gain from its own start. ``inference_speedup``: DDPO's seconds per image at its training horizon over
    RLCM's, ``inference_speedup_50_ddim`` at the paper's 50 DDIM steps. With DPG (alignment):
    ``reaches_ddpo_start`` per RLCM method, and ``dpg_query_efficiency``: PPO's queries to its final eval reward
    over DPG's.
    """
    runs = task["runs"]
    ddpo, rlcm = runs[DDPO_PPO.name], runs[RLCM_PPO.name]
    ddpo_trained = not all(len(m) == 1 for m in ddpo)
    summary: dict = {}
    for key, x in (("train_speedup", "wall_time_s"), ("query_efficiency", "reward_queries")):
        measured = ratio(ddpo, rlcm, x, "DDPO", "RLCM")
        if not ddpo_trained:
            measured.update(value=None, ci95=None, why_none="DDPO not trained here: its start is the reference")
        summary[key] = measured["value"]
        for part in RATIO_PARTS:
            summary[f"{key}_{part}"] = measured[part]
    summary["prompt_accuracy_at_target"] = accuracy_at_target(summary["train_speedup_pairs"], ddpo, rlcm)
    # RLCM may have gone on past DDPO's budget (--rlcm-queries-factor): start and end compare equal queries.
    horizon = max(m[-1]["reward_queries"] for m in ddpo) if ddpo_trained else float("inf")
    equal = {m: [[r for r in run if r["reward_queries"] <= horizon] for run in seeds] for m, seeds in runs.items()}
    summary["eval_reward"] = {m: start_and_end(r, "eval_reward_mean") for m, r in equal.items()}
    summary["eval_prompt_accuracy"] = {m: start_and_end(r, "eval_prompt_accuracy") for m, r in equal.items()}
    evaluation, configs = task.get("evaluation", {}), task["configs"]
    summary["ddpo_gain_in_standard_errors"] = gain_in_standard_errors(
        summary["eval_reward"][DDPO_PPO.name]["gain"], ddpo, configs[DDPO_PPO.name]["eval_size"]
    )
    if RLCM_PPO.name in evaluation and DDPO_PPO.name in evaluation:
        seconds = lambda m, steps: evaluation[m.name]["steps"][str(steps)]["seconds_per_image"]
        rlcm_time = seconds(RLCM_PPO, configs[RLCM_PPO.name]["num_steps"])
        summary["inference_speedup"] = seconds(DDPO_PPO, configs[DDPO_PPO.name]["num_steps"]) / rlcm_time
        if str(PAPER_DDIM_STEPS) in evaluation[DDPO_PPO.name]["steps"]:
            summary["inference_speedup_50_ddim"] = seconds(DDPO_PPO, PAPER_DDIM_STEPS) / rlcm_time
    if RLCM_DPG.name in runs:
        ddpo_start = summary["eval_reward"][DDPO_PPO.name]["start"]
        summary["reaches_ddpo_start"] = {
            m: reaching(r, ddpo_start) for m, r in runs.items() if METHODS[m].family == "rlcm"
        }
        summary["dpg_query_efficiency"] = ratio(rlcm, runs[RLCM_DPG.name], "reward_queries", "PPO", "DPG")
    summary["contended_runs"] = contended_runs(runs)
    return summary
