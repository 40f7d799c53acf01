"""The numbers of a benchmark task, from its runs' evaluation curves, as docs/benchmark/PROTOCOL.md defines them.

v2's headline: ``fidelity_speedup``, per seed pair DDPO's training wall-clock to the fidelity target over RLCM's
(benchmarks/fidelity.py), the geometric mean over pairs with a t-interval on the log ratios, censored pairs kept
and counted. Secondary: the paper's ratio (how much sooner RLCM reaches DDPO's final reward, ``benchmarks.ratios``).

Protocol v3 (the addendum of 2026-12-07) reads the same times to target as censored survival data: every
comparison gets a ``v3`` object beside its v2 fields (``v3``), which it leaves as they were.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np

from benchmarks.censoring import Median, kaplan_meier, median, median_ratio, restricted_ratio, sign_test
from benchmarks.fidelity import (
    ACCURACY_KEPT,
    DELTA,
    geometric_mean_ratio,
    reach,
    standard_errors,
    t_interval,
    task_reward,
)
from benchmarks.methods import DDPO_PPO, METHODS, PAPER_DDIM_STEPS, RLCM_DPG, RLCM_PPO, VERSUS, Method
from benchmarks.ratios import final_reward, first_reach, pair_ratio, summarise_pairs
from genrl.best import BestEvaluation

CONTENDED = 0.8
"""A run is flagged when its CPU/wall ratio is below this fraction of the best of its method on the same task."""
LEARNED_STANDARD_ERRORS = 3.0
"""A method learned on the benchmark seeds if its mean final gain is at least this many standard errors."""
RATIO_PARTS = ("ci95", "pairs", "censored")
"""What ``summarise_pairs`` gives beside the value; a summary stores each as ``<key>_<part>``."""
TASK_REWARD = "eval_task_reward"
"""The key under which ``with_task_reward`` puts each evaluation's task reward."""
MEASURES = ("reward_queries", "wall_time_s", "cpu_time_s")
"""What v3 times each run to the target in: reward queries, training wall-clock and process CPU time."""
NOT_REACHED = "not reached"
"""A v3 median where the Kaplan-Meier curve stays above 0.5: the median is longer than the ``followed`` beside it."""
NOT_ESTIMABLE = "not estimable"
"""A v3 unrestricted speedup where a method reached the target on fewer than half its seeds."""


def with_task_reward(runs: dict[str, list[list[dict]]], task: str) -> dict[str, list[list[dict]]]:
    """The runs with each evaluation's task reward under ``TASK_REWARD`` (a composite's part, or the reward)."""
    add = lambda m: {**m, TASK_REWARD: task_reward(m, task)} if "eval_reward_mean" in m else m
    return {name: [[add(m) for m in run] for run in seeds] for name, seeds in runs.items()}


def evaluations(metrics: list[dict], key: str = TASK_REWARD) -> tuple[list[float], list[float], list[float]]:
    """A run's evaluation curve: reward queries, training wall-clock and ``key`` at each evaluation."""
    points = [m for m in metrics if key in m]
    return [m["reward_queries"] for m in points], [m["wall_time_s"] for m in points], [m[key] for m in points]


def curve(metrics: list[dict], x: str, key: str = TASK_REWARD) -> tuple[list[float], list[float]]:
    """``key`` against ``x``: "reward_queries", or else training wall-clock."""
    queries, wall, y = evaluations(metrics, key)
    return (queries if x == "reward_queries" else wall), y


def start_and_end(runs: list[list[dict]], key: str) -> dict | None:
    """Mean over seeds of the untrained model's ``key`` and of the final one (last 3 evaluations); the gain from
    each run's own start, with a 95% t-interval over seeds and its size in standard errors. None where no run
    logged ``key``."""
    ys = [evaluations(m, key)[2] for m in runs]
    if not all(ys):
        return None
    gains = [final_reward(y) - y[0] for y in ys]
    return {
        "start": float(np.mean([y[0] for y in ys])),
        "end": float(np.mean([final_reward(y) for y in ys])),
        "gain": float(np.mean(gains)),
        "gain_ci95": t_interval(gains),
        "gain_standard_errors": standard_errors(gains),
        "gains": gains,
    }


def cpu_per_wall(metrics: list[dict]) -> float:
    """Process CPU seconds per training wall-clock second: lower than its peers when other work took the cores."""
    last = metrics[-1]
    if not last["wall_time_s"]:
        return float("nan")  # not trained
    return last.get("cpu_time_s", float("nan")) / last["wall_time_s"]


def seconds_per_query(metrics: list[dict]) -> float:
    last = metrics[-1]
    return last["wall_time_s"] / last["reward_queries"]


def fidelity(runs: dict[str, list[list[dict]]], fast: Method, slow: Method, task: str) -> dict:
    """The headline's numbers for ``fast`` over ``slow`` (see the module's docstring): per seed pair, where each run
    reached the target or was censored, and the ratios (slow's over fast's) of wall-clock, CPU time and reward
    queries to it and of seconds per query; each ratio's geometric mean over pairs with its 95% t-interval on the
    logs; the censored runs counted."""
    pairs = []
    for s, f in zip(runs[slow.name], runs[fast.name]):
        a, b = reach(s, task), reach(f, task)
        pairs.append(
            {
                slow.name: asdict(a),
                fast.name: asdict(b),
                # slow censored: its time is at least its budget's, so the ratio at least this; fast censored: at most.
                "bound": {(True, False): "lower", (False, True): "upper", (True, True): "none"}.get(
                    (a.censored, b.censored)
                ),
                "wall": a.wall_time_s / b.wall_time_s,
                "cpu": a.cpu_time_s / b.cpu_time_s,
                "queries": a.reward_queries / b.reward_queries,
                "cost_per_query": seconds_per_query(s) / seconds_per_query(f),
            }
        )
    out: dict = {"delta": DELTA, "pairs": pairs}
    for key, name in (
        ("fidelity_speedup", "wall"),
        ("fidelity_cpu_ratio", "cpu"),
        ("fidelity_query_ratio", "queries"),
        ("cost_per_query_ratio", "cost_per_query"),
    ):
        values = [p[name] for p in pairs]
        if not values or not all(v > 0 and math.isfinite(v) for v in values):
            out[key], out[f"{key}_ci95"] = None, None
            continue
        out[key], out[f"{key}_ci95"] = geometric_mean_ratio(values)
    out["censored"] = {
        slow.name: sum(p["bound"] == "lower" for p in pairs),
        fast.name: sum(p["bound"] == "upper" for p in pairs),
        "both": sum(p["bound"] == "none" for p in pairs),
    }
    out["reached"] = {m.name: sum(not p[m.name]["censored"] for p in pairs) for m in (slow, fast)}
    return out


def trained(runs: list[list[dict]]) -> bool:
    """Whether a method was trained here, not only evaluated untrained as a reference."""
    return not all(len(m) == 1 for m in runs)


def versus(summary: dict, runs: dict[str, list[list[dict]]], task: str) -> dict:
    """The contender's comparisons (``VERSUS``) where both methods trained: each one's fidelity ratios as the
    headline's, and whether it is a headline (both learned), keyed "<faster> over <slower>"."""
    out = {}
    for fast, slow in VERSUS:
        if not (fast.name in runs and slow.name in runs and trained(runs[fast.name]) and trained(runs[slow.name])):
            continue
        measured = {"fast": fast.name, "slow": slow.name, **fidelity(runs, fast, slow, task)}
        measured["headline"], measured["headline_why_none"] = learned(
            {m.name: summary["eval_reward"][m.name] for m in (slow, fast)}, runs
        )
        measured["v3"] = v3(runs, fast, slow, task)
        out[f"{fast.name} over {slow.name}"] = measured
    return out


def learned(gains: dict[str, dict | None], runs: dict[str, list[list[dict]]]) -> tuple[bool, str | None]:
    """Whether every method's mean final gain is at least ``LEARNED_STANDARD_ERRORS`` standard errors over the
    seeds; if not, which did not learn, within what budget (its runs' reward queries)."""
    budget = lambda m: max(run[-1]["reward_queries"] for run in runs[m])
    missing = [
        f"{m} (its mean final gain {g['gain']:+.3f} is {g['gain_standard_errors']:.1f} standard errors, within "
        f"{budget(m):.0f} reward queries)"
        for m, g in gains.items()
        if g is not None and not g["gain_standard_errors"] >= LEARNED_STANDARD_ERRORS
    ]
    if not missing:
        return True, None
    return False, "did not learn on the benchmark seeds: " + "; ".join(missing)


def accuracy_at_target(pairs: list[dict], slow: list[list[dict]], fast: list[list[dict]]) -> dict | None:
    """Each method's prompt accuracy where it first reached its pair's target in the paper's ratio (interpolated in
    wall-clock), mean over the pairs reached: a reward reached by erasing the subject shows here."""
    measured = [(p, s, f) for p, s, f in zip(pairs, slow, fast) if not p["censored"] and p["fast_x"] is not None]
    if not measured or not all(evaluations(run, "eval_prompt_accuracy")[2] for _, *runs in measured for run in runs):
        return None
    at = lambda run, x: float(np.interp(x, *curve(run, "wall_time_s", "eval_prompt_accuracy")))
    return {
        DDPO_PPO.name: float(np.mean([at(s, p["slow_x"]) for p, s, _ in measured])),
        RLCM_PPO.name: float(np.mean([at(f, p["fast_x"]) for p, _, f in measured])),
    }


def ratio(slow: list[list[dict]], fast: list[list[dict]], x: str) -> dict:
    """The paper's ratio per seed pair: ``slow``'s x to its final task reward over ``fast``'s x to the same."""
    return summarise_pairs([pair_ratio(curve(s, x), curve(f, x)) for s, f in zip(slow, fast)])


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


def contended_runs(runs: dict[str, list[list[dict]]], seeds: list[int]) -> list[dict]:
    """Runs whose CPU/wall ratio fell below ``CONTENDED`` of the best of their method: other work took cores."""
    flagged = []
    for method, per_seed in runs.items():
        shares = [cpu_per_wall(m) for m in per_seed]
        if any(np.isnan(shares)):
            continue  # not trained
        best = max(shares)
        for seed, share in zip(seeds, shares):
            if share < CONTENDED * best:
                flagged.append({"method": method, "seed": seed, "cpu_per_wall": share, "best_of_method": best})
    return flagged


def summarise(task_name: str, task: dict, seeds: list[int]) -> dict:
    """The numbers of one task (``seeds``: the runs' seeds, in order).

    ``fidelity_speedup`` (and ``_ci95``, ``_pairs``, ``_censored``, ``_reached``), ``fidelity_cpu_ratio``,
    ``fidelity_query_ratio``, ``cost_per_query_ratio``: see ``fidelity``. ``headline``: whether both methods learned
    (``learned``), ``headline_why_none`` otherwise. ``eval_reward`` (the task reward) and ``eval_prompt_accuracy``:
    each method's start and end and its gain with a t-interval. ``train_speedup`` and ``query_efficiency``: the
    paper's ratio in wall-clock and in queries (``benchmarks.ratios``), ``prompt_accuracy_at_target`` there.
    ``inference_speedup``: DDPO's seconds per image at its training horizon over RLCM's: the median of interleaved
    rounds (``inference_timing``, with ``_range`` and ``_under_load`` beside it) where the task has them; ``_50_ddim``
    at the paper's 50 DDIM steps (DDPO's 50-step time over its horizon's, timed one after the other, scales it).
    With DPG (alignment): ``reaches_ddpo_start`` per trained method and ``dpg_query_efficiency``.
    ``versus``: the contender's fidelity ratios against each of the pair it trained beside (``versus``).
    ``v3``, beside the pair's fields and in each ``versus`` entry: protocol v3's reading of the comparison (``v3``).
    """
    runs = with_task_reward(task["runs"], task_name)
    ddpo, rlcm = runs[DDPO_PPO.name], runs[RLCM_PPO.name]
    ddpo_trained = trained(ddpo)
    summary: dict = {
        "eval_reward": {m: start_and_end(r, TASK_REWARD) for m, r in runs.items()},
        "eval_prompt_accuracy": {m: start_and_end(r, "eval_prompt_accuracy") for m, r in runs.items()},
    }
    if ddpo_trained:
        measured = fidelity(runs, RLCM_PPO, DDPO_PPO, task_name)
        for key in ("fidelity_speedup", "fidelity_cpu_ratio", "fidelity_query_ratio", "cost_per_query_ratio"):
            summary[key], summary[f"{key}_ci95"] = measured[key], measured[f"{key}_ci95"]
        summary.update(
            fidelity_delta=measured["delta"],
            fidelity_speedup_pairs=measured["pairs"],
            fidelity_speedup_censored=measured["censored"],
            fidelity_speedup_reached=measured["reached"],
        )
        headline = {m: summary["eval_reward"][m] for m in (DDPO_PPO.name, RLCM_PPO.name)}
        summary["headline"], summary["headline_why_none"] = learned(headline, runs)
        if len(seeds) < 2:
            summary["headline"], summary["headline_why_none"] = False, "one seed: no interval (quick mode)"
        summary["v3"] = v3(runs, RLCM_PPO, DDPO_PPO, task_name)
        for key, x in (("train_speedup", "wall_time_s"), ("query_efficiency", "reward_queries")):
            paper = ratio(ddpo, rlcm, x)
            summary[key] = paper["value"]
            for part in RATIO_PARTS:
                summary[f"{key}_{part}"] = paper[part]
        summary["prompt_accuracy_at_target"] = accuracy_at_target(summary["train_speedup_pairs"], ddpo, rlcm)
    else:
        summary["headline"], summary["headline_why_none"] = False, "DDPO not trained here: its start is the reference"
    evaluation, configs = task.get("evaluation", {}), task["configs"]
    if RLCM_PPO.name in evaluation and DDPO_PPO.name in evaluation:
        seconds = lambda m, steps: evaluation[m.name]["steps"][str(steps)]["seconds_per_image"]
        rlcm_time = seconds(RLCM_PPO, configs[RLCM_PPO.name]["num_steps"])
        summary["inference_speedup"] = seconds(DDPO_PPO, configs[DDPO_PPO.name]["num_steps"]) / rlcm_time
        if "inference_timing" in task:  # interleaved rounds: robust to a slow spell, flagged if measured under load
            timing = task["inference_timing"]
            summary["inference_speedup"], summary["inference_speedup_range"] = timing["ratio"], timing["ratio_range"]
            summary["inference_speedup_under_load"] = timing["under_load"]
        if str(PAPER_DDIM_STEPS) in evaluation[DDPO_PPO.name]["steps"]:
            ddpo_steps = seconds(DDPO_PPO, PAPER_DDIM_STEPS) / seconds(DDPO_PPO, configs[DDPO_PPO.name]["num_steps"])
            summary["inference_speedup_50_ddim"] = summary["inference_speedup"] * ddpo_steps
    if RLCM_DPG.name in runs:
        ddpo_start = summary["eval_reward"][DDPO_PPO.name]["start"]
        summary["reaches_ddpo_start"] = {
            m: reaching(r, ddpo_start) for m, r in runs.items() if METHODS[m] is not DDPO_PPO
        }
        summary["dpg_query_efficiency"] = ratio(rlcm, runs[RLCM_DPG.name], "reward_queries")
    summary["versus"] = versus(summary, runs, task_name)
    summary["contended_runs"] = contended_runs(runs, seeds)
    return summary


# --------------------------------------------------------------------------------------------------
# Protocol v3: the times to target as censored data
# --------------------------------------------------------------------------------------------------
def kept_best_gain(metrics: list[dict]) -> float:
    """A run's gain in the task reward at its best evaluation that keeps ``ACCURACY_KEPT`` of its starting prompt
    accuracy (genrl/best.py's rule, on the task reward): v3 judges learning where the picture is kept, not at the
    end of the budget where a reward-hacking run has erased it. The start keeps itself, so the gain is at least 0."""
    points = [m for m in metrics if TASK_REWARD in m]
    kept = BestEvaluation(ACCURACY_KEPT, start_accuracy=points[0].get("eval_prompt_accuracy"))
    return max(m[TASK_REWARD] for m in points if kept.keeps_picture(m)) - points[0][TASK_REWARD]


def learned_at_kept_best(runs: list[list[dict]]) -> dict:
    """v3's "learned": the mean over seeds of the kept-best gains is at least ``LEARNED_STANDARD_ERRORS`` of its
    standard errors. ``gain_standard_errors`` is None where the gains do not spread (a mean of 0 then did not
    learn, any other did)."""
    gains = [kept_best_gain(m) for m in runs]
    size = standard_errors(gains)
    return {
        "gains": gains,
        "gain": float(np.mean(gains)),
        "gain_ci95": t_interval(gains),
        "gain_standard_errors": size if math.isfinite(size) else None,
        "learned": bool(size >= LEARNED_STANDARD_ERRORS),  # NaN (one seed, or all 0) compares False
    }


def _median_entry(curve_median: Median, budget: float) -> dict:
    return {
        "median": curve_median.value if curve_median.reached else NOT_REACHED,
        "ci95": [curve_median.low, curve_median.high],
        "followed": curve_median.followed,
        "budget": budget,
    }


def _median_ratio(slow: Median, fast: Median) -> dict:
    value, interval = median_ratio(slow, fast)
    entry: dict = {"ratio": value, "ci95": interval}
    if value is None:
        entry["why_none"] = "a median not reached in this measure (the runs end at different times)"
    return entry


def _restricted(
    times: dict[str, list[float]], censored: dict[str, list[bool]], slow: str, fast: str, tau: float
) -> dict:
    found = restricted_ratio(times[slow], censored[slow], times[fast], censored[fast], tau)
    entry = {"tau": tau, "means": {slow: found.slow, fast: found.fast}, "ratio": found.ratio, "ci95": found.ci95}
    return {**entry, "why_no_interval": found.why_no_interval} if found.why_no_interval else entry


def _why_not_learned(name: str, learned: dict) -> str:
    size = learned["gain_standard_errors"]
    spread = f"{size:.1f} standard errors" if size is not None else "no spread over the seeds"
    return f"{name} did not learn at its kept best (mean gain {learned['gain']:+.3f}, {spread})"


def v3(runs: dict[str, list[list[dict]]], fast: Method, slow: Method, task: str) -> dict:
    """Protocol v3's reading of ``fast`` over ``slow`` (docs/benchmark/PROTOCOL.md, "Protocol v3"), from the same
    times to target as v2 (``reach``), each run censored at its end where it never met the target.

    ``methods``: per method its reached count; per measure (``MEASURES``) its Kaplan-Meier median with the 95%
    interval of the inverted log-log band (``NOT_REACHED``, or None for an end, where the curve or band stays above
    0.5: longer than ``followed``, the longest time followed) and its runs' ``budget`` (the longest run); and
    ``learned`` at its kept best. ``restricted``: per measure, both restricted means within tau (reward queries:
    the runs' budget; wall-clock and CPU time: the shortest complete run of either method, so that every run is
    followed to tau) and slow's over fast's with a 95% paired BCa interval. ``median_ratio``: per measure the ratio
    of the medians with the interval from theirs, or ``NOT_ESTIMABLE`` with ``median_ratio_why_not`` where a method
    reached the target on fewer than half its seeds. ``sign_test``: who got there first, in reward queries, over
    the informative pairs. ``headline``: both learned and the median ratio estimable; ``headline_why_none`` says
    why not."""
    names = (slow.name, fast.name)
    reached = {name: [reach(m, task) for m in runs[name]] for name in names}
    censored = {name: [r.censored for r in reached[name]] for name in names}
    methods: dict = {
        name: {
            "reached": censored[name].count(False),
            "seeds": len(censored[name]),
            "median": {},
            "learned": learned_at_kept_best(runs[name]),
        }
        for name in names
    }
    restricted, ratios = {}, {}
    for measure in MEASURES:
        times = {name: [getattr(r, measure) for r in reached[name]] for name in names}
        if not all(math.isfinite(t) for name in names for t in times[name]):
            continue  # not recorded (runs from before CPU time was)
        medians = {name: median(kaplan_meier(times[name], censored[name])) for name in names}
        for name in names:
            methods[name]["median"][measure] = _median_entry(medians[name], max(m[-1][measure] for m in runs[name]))
        tau = min(m[-1][measure] for name in names for m in runs[name])
        restricted[measure] = _restricted(times, censored, slow.name, fast.name, tau)
        ratios[measure] = _median_ratio(medians[slow.name], medians[fast.name])
    out: dict = {
        "fast": fast.name,
        "slow": slow.name,
        "pairs": len(reached[slow.name]),
        "methods": methods,
        "restricted": restricted,
    }
    short = [name for name in names if 2 * methods[name]["reached"] < methods[name]["seeds"]]
    if short:
        out["median_ratio"] = NOT_ESTIMABLE
        out["median_ratio_why_not"] = "; ".join(
            f"{name} reached the target on {methods[name]['reached']} of {methods[name]['seeds']} seeds, fewer "
            "than half"
            for name in short
        )
    else:
        out["median_ratio"] = ratios
    queries = {name: [r.reward_queries for r in reached[name]] for name in names}
    test = sign_test(queries[slow.name], censored[slow.name], queries[fast.name], censored[fast.name])
    out["sign_test"] = {
        "wins": {fast.name: test.fast_wins, slow.name: test.slow_wins},
        "ties": test.ties,
        "both_censored": test.both_censored,
        "informative": test.informative,
        "p": test.p,
    }
    why = [f"no unrestricted speedup: {out['median_ratio_why_not']}"] if short else []
    why += [_why_not_learned(name, m["learned"]) for name, m in methods.items() if not m["learned"]["learned"]]
    out["headline"] = not why
    out["headline_why_none"] = "; ".join(why) if why else None
    return out
