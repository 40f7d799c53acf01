"""The benchmark's outputs from its results: results.json, the figures and report.md."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.figures import plot_curves, plot_evaluations, plot_frontier
from benchmarks.methods import DDPO_PPO, METHODS, RLCM_PPO
from benchmarks.results_check import check_summaries
from benchmarks.runs import run_directory
from benchmarks.summary import CONTENDED, MEASURES, NOT_ESTIMABLE, NOT_REACHED, RATIO_PARTS, cpu_per_wall
from genrl.rundir import atomic_write_text


def write_outputs(results: dict, out: Path) -> None:
    """results.json, the figures and report.md, from results whose tasks carry their summaries."""
    results["summary"] = {task: data["summary"] for task, data in results["tasks"].items()}
    check_summaries(results)  # no NaN, and no v3 headline where v3 calls the speedup not estimable
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))  # a failed rewrite keeps the old one
    plot_curves(results, "reward_queries", "reward queries", out / "fig4_reward_vs_queries.png")
    plot_curves(results, "wall_time_s", "training wall-clock (s)", out / "fig5_reward_vs_wallclock.png")
    plot_frontier(results, out / "fig_frontier.png")
    plot_evaluations(results, out)
    write_report(results, out)


def _interval(ci: list[float] | None, signed: bool = False) -> str:
    if ci is None:
        return ""
    low, high = ci
    return f" [{low:+.3f}, {high:+.3f}]" if signed else f" [{low:.2f}, {high:.2f}]"


def format_fidelity(summary: dict, key: str) -> str:
    """A geometric-mean ratio of the headline with its interval, or n/a."""
    value = summary.get(key)
    return "n/a" if value is None else f"{value:.2f}{_interval(summary[f'{key}_ci95'])}"


def format_ratio(summary: dict, key: str) -> str:
    """The paper's ratio ``key`` with its interval and its censored pairs."""
    value, censored = summary[key], summary[f"{key}_censored"]
    bounds = f", {censored} censored (upper bounds)" if censored else ""
    return f"{value:.2f}{_interval(summary[f'{key}_ci95'])}{bounds}"


def format_start_end(values: dict | None) -> str:
    if values is None:
        return "-"
    return (
        f"{values['start']:.3f} -> {values['end']:.3f} ({values['gain']:+.3f}{_interval(values['gain_ci95'], True)}, "
        f"{values['gain_standard_errors']:.1f} SE)"
    )


# --------------------------------------------------------------------------------------------------
# Protocol v3: what the report leads with
# --------------------------------------------------------------------------------------------------
MEASURE_NAMES = {"reward_queries": "reward queries", "wall_time_s": "training wall-clock", "cpu_time_s": "CPU time"}
"""Each v3 measure as the report names it."""


def _amount(measure: str) -> Callable[[float], str]:
    """How a time to target in ``measure`` is written: whole reward queries, seconds to one decimal."""
    return (lambda x: f"{x:.0f}") if measure == "reward_queries" else (lambda x: f"{x:.1f} s")


def _comparisons(results: dict) -> list[tuple[str, str, dict]]:
    """(task, "A over B", its v3 object) for every comparison: the headline pair's, then the contender's."""
    rows = []
    for task, data in results["tasks"].items():
        s = data["summary"]
        if "v3" in s:
            rows.append((task, f"{s['v3']['fast']} over {s['v3']['slow']}", s["v3"]))
        rows += [(task, name, v["v3"]) for name, v in s["versus"].items() if "v3" in v]
    return rows


def format_median(entry: dict, measure: str) -> str:
    """A Kaplan-Meier median with its interval; a median or an end that the curve never gets to is written as
    beyond the longest time followed, never as a number."""
    amount = _amount(measure)
    beyond = f"> {amount(entry['followed'])}"
    end = lambda x: beyond if x is None else amount(x)
    value = f"not reached ({beyond})" if entry["median"] == NOT_REACHED else amount(entry["median"])
    low, high = entry["ci95"]
    return f"{value} [{end(low)}, {end(high)}]"


def format_times(ratio: float | None, ci: list[float | None] | None) -> str:
    """A ratio with its interval; an end that the data leave open is "unbounded" (or "0" below)."""
    if ratio is None:
        return "n/a"
    if ci is None:
        return f"{ratio:.2f}x"
    low, high = ci
    low_text = "0" if low is None else f"{low:.2f}"
    return f"{ratio:.2f}x [{low_text}, {'unbounded' if high is None else f'{high:.2f}'}]"


def _within(v3: dict, measure: str) -> str:
    entry = v3["restricted"][measure]
    tau = _amount(measure)(entry["tau"])
    unit = " reward queries" if measure == "reward_queries" else f" of {MEASURE_NAMES[measure]}"
    why = f" ({entry['why_no_interval']})" if entry["ci95"] is None else ""
    return f"within {tau}{unit} {format_times(entry['ratio'], entry['ci95'])}{why}"


def format_sign_test(v3: dict) -> str:
    test, fast, slow = v3["sign_test"], v3["fast"], v3["slow"]
    p = "no pair decided" if test["p"] is None else f"p = {test['p']:.2g}"
    neither = test["both_censored"]
    return (
        f"{fast} first in {test['wins'][fast]} of {test['informative']} informative pairs, {slow} in "
        f"{test['wins'][slow]}, ties {test['ties']} ({neither} pair{'' if neither == 1 else 's'} where neither "
        f"reached it left out; sign test {p})"
    )


def format_v3(v3: dict) -> str:
    """One comparison as v3 words it: the "X times sooner" where it is a headline, else why there is none; then
    the reached counts, the restricted ratios and the sign test."""
    fast, slow, methods = v3["fast"], v3["slow"], v3["methods"]
    reached = ", ".join(f"{m} {methods[m]['reached']}/{methods[m]['seeds']}" for m in (slow, fast))
    within = "; ".join(_within(v3, measure) for measure in MEASURES if measure in v3["restricted"])
    estimable = v3["median_ratio"] != NOT_ESTIMABLE
    sooner = ""
    if estimable:
        sooner = ", ".join(
            f"{format_times(r['ratio'], r['ci95'])} in {MEASURE_NAMES[m]}" for m, r in v3["median_ratio"].items()
        )
    if v3["headline"]:
        lead = f"**v3 headline: {fast} reaches the target sooner than {slow}, {sooner}** (ratio of the medians)"
    elif estimable:
        lead = f"**no v3 headline** ({v3['headline_why_none']}); ratio of the medians {sooner}"
    else:
        lead = f'**no v3 headline, no "X times sooner"** ({v3["headline_why_none"]})'
    return (
        f"{lead}. Reached the target: {reached}. {slow}'s restricted mean time to target over {fast}'s (below 1: "
        f"{slow} gets there sooner), 95% BCa: {within}. {format_sign_test(v3)}."
    )


def format_headline(summary: dict) -> str:
    """One line: v2's fidelity speed-up, its interval and censored pairs, and whether it was v2's headline; then
    what v3 says of the same comparison."""
    if "fidelity_speedup" not in summary:
        return f"no fidelity speed-up ({summary['headline_why_none']})"
    censored = summary["fidelity_speedup_censored"]
    line = (
        f"v2 fidelity_speedup {format_fidelity(summary, 'fidelity_speedup')} over "
        f"{len(summary['fidelity_speedup_pairs'])} seed pairs (censored: DDPO {censored[DDPO_PPO.name]}, RLCM "
        f"{censored[RLCM_PPO.name]}, both {censored['both']})"
    )
    line = line if summary["headline"] else f"{line}; not a v2 headline: {summary['headline_why_none']}"
    return f"{format_v3(summary['v3'])}\n  {line}" if "v3" in summary else line


def _v3_lead(results: dict) -> list[str]:
    rows = _comparisons(results)
    if not rows:
        return []
    return [
        "",
        "## What protocol v3 says",
        "",
        "Each method's times to the target (the first evaluation that gains Δ = 0.05 in the task reward over the "
        "run's start with at least 80% of its starting prompt accuracy), a run that never gets there censored at its "
        "end, read as survival data: the reached counts; each method's Kaplan-Meier median with its 95% interval "
        '(the pointwise log-log band inverted; "not reached" where the curve stays above 0.5); the restricted mean '
        "time to target within τ (the area under the curve up to τ: τ is the budget in reward queries, the shortest "
        "complete run of either method in wall-clock and CPU time) and the ratio of the two, with a 95% BCa interval "
        '(9999 paired resamples of the seed pairs, seed 0); the ratio of the medians ("X times sooner") only where '
        "both methods reached the target on at least half their seeds; a sign test over the pairs in which at least "
        "one reached it (both-censored pairs never count). A comparison is a headline only if that ratio is "
        "estimable and both methods learned: the mean of their gains at the best evaluation that kept 80% of the "
        "starting prompt accuracy (the start counting, gain 0) is at least 3 standard errors. Code: "
        "`benchmarks/censoring.py`, `v3` in `benchmarks/summary.py`; figures: `v3` beside each comparison in "
        "`results.json`.",
        "",
        *[f"- {task}, {name}: {format_v3(v3)}" for task, name, v3 in rows],
    ]


def _v3_table(results: dict) -> list[str]:
    rows = _comparisons(results)
    if not rows:
        return []
    lines = [
        "",
        "v3 per comparison (\"A over B\": B's time over A's; restricted ratios within τ with 95% BCa intervals; "
        "medians' ratio with the interval from theirs):",
        "",
        "| task | comparison | reached (B / A) | within τ: reward queries | within τ: wall-clock | "
        "within τ: CPU time | X times sooner (queries / wall-clock / CPU) | first to the target (A / B / ties; "
        "both censored), sign test p | learned at the kept best (B / A) | v3 headline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, name, v3 in rows:
        fast, slow, methods, test = v3["fast"], v3["slow"], v3["methods"], v3["sign_test"]
        within = []
        for measure in MEASURES:
            entry = v3["restricted"].get(measure)
            within.append(
                "-"
                if entry is None
                else f"{format_times(entry['ratio'], entry['ci95'])} (τ {_amount(measure)(entry['tau'])})"
            )
        sooner = (
            NOT_ESTIMABLE
            if v3["median_ratio"] == NOT_ESTIMABLE
            else " / ".join(format_times(r["ratio"], r["ci95"]) for r in v3["median_ratio"].values())
        )
        learned = " / ".join("yes" if methods[m]["learned"]["learned"] else "no" for m in (slow, fast))
        p = "-" if test["p"] is None else f"{test['p']:.2g}"
        verdict = "yes" if v3["headline"] else f"no: {v3['headline_why_none']}"
        lines.append(
            f"| {task} | {name} | {methods[slow]['reached']}/{methods[slow]['seeds']} / "
            f"{methods[fast]['reached']}/{methods[fast]['seeds']} | {' | '.join(within)} | {sooner} | "
            f"{test['wins'][fast]} / {test['wins'][slow]} / {test['ties']}; {test['both_censored']}, p = {p} | "
            f"{learned} | {verdict} |"
        )
    return lines


def _v3_methods(results: dict) -> list[str]:
    """Each method of a v3 comparison alone: its reached count, medians and kept-best gain, once per task."""
    lines = [
        "",
        "v3, each method alone: Kaplan-Meier medians of the time to target [95% interval] (a median or an end the "
        "curve never gets to is written beyond the longest time followed), and the gain in the task reward at each "
        "run's best evaluation that kept 80% of its starting prompt accuracy (mean over seeds, 95% t-interval, its "
        "size in standard errors). In reward queries every censored run ends at the budget; in wall-clock and CPU "
        "time the runs end at different times, so a run that meets the target after every censored run has ended "
        "takes the curve to 0 there, and a median can exist in seconds where in reward queries it is not reached: "
        "read the reward queries first.",
        "",
        "| task | method | reached | median reward queries | median training wall-clock | median CPU time | "
        "gain at the kept best | learned |",
        "|---|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for task, _, v3 in _comparisons(results):
        for name in (v3["slow"], v3["fast"]):
            if (task, name) in seen:
                continue
            seen.add((task, name))
            m = v3["methods"][name]
            medians = [format_median(m["median"][k], k) if k in m["median"] else "-" for k in MEASURES]
            learned = m["learned"]
            size = learned["gain_standard_errors"]
            gain = f"{learned['gain']:+.3f}{_interval(learned['gain_ci95'], True)}, " + (
                "no spread" if size is None else f"{size:.1f} SE"
            )
            lines.append(
                f"| {task} | {name} | {m['reached']}/{m['seeds']} | {' | '.join(medians)} | {gain} | "
                f"{'yes' if learned['learned'] else 'no'} |"
            )
    return [] if len(lines) == 6 else lines


# --------------------------------------------------------------------------------------------------
# The arms: what differs between the methods besides the method
# --------------------------------------------------------------------------------------------------
def update_structure(config: dict) -> dict | None:
    """A method's update structure from its config (config.json's fields): optimizer steps per 64 reward queries,
    gradient clip, advantage clip, PPO clip range, learning rate, weight decay, KL. PPO takes an optimizer step
    every ``gradient_accumulation_steps`` minibatches of ``train_batch_size`` trajectories, ``inner_epochs`` passes
    an epoch; DPG one every ``gradient_accumulation_steps`` sampling batches. With one step per epoch every PPO
    ratio is 1 and the clip range never binds. None where the config lacks a field of these."""
    try:
        return _update_structure(config)
    except KeyError:
        return None


def _update_structure(config: dict) -> dict:
    samples = config["sample_batch_size"] * config["batches_per_epoch"]
    if "ppo" in config:
        ppo = config["ppo"]
        minibatches = math.ceil(samples / ppo["train_batch_size"])
        steps = math.ceil(minibatches / ppo["gradient_accumulation_steps"]) * ppo["inner_epochs"]
        clips = {"advantage_clip": ppo["adv_clip_max"], "clip_range": ppo["clip_range"]}
        algo = ppo
    else:
        algo = config["dpg"]
        steps = math.ceil(config["batches_per_epoch"] / algo["gradient_accumulation_steps"])
        clips = {"advantage_clip": None, "clip_range": None}
    return {
        "samples_per_epoch": samples,
        "steps_per_epoch": steps,
        "steps_per_64_queries": steps * 64 / samples,
        "grad_clip": algo["max_grad_norm"],
        **clips,
        "learning_rate": config["learning_rate"],
        "weight_decay": config["adam_weight_decay"],
        "kl_coef": algo["kl_coef"],
    }


def _run_configs(out: Path, task: str, method: str, seeds: list[int]) -> list[dict] | None:
    """The config.json of each of a method's runs on ``task`` under ``out``, or None where one is missing."""
    paths = [run_directory(out, task, METHODS[method].slug, seed) / "config.json" for seed in seeds]
    if not all(p.is_file() for p in paths):
        return None
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths]


def _arms(results: dict, out: Path) -> list[str]:
    """Each trained arm's update structure and where it comes from: v3 compares the methods as tuned, and the arms
    differ in more than the method."""
    seeds = results["meta"]["seeds"]
    lines = [
        "",
        "## The arms: update structure",
        "",
        "The comparisons are of the methods as tuned (PROTOCOL.md, v3), not of the method alone: the arms also differ "
        "in how often they step and how hard they clip. With one optimizer step per sampling round (an epoch) every "
        "PPO ratio is 1 and the clip range never binds.",
        "",
        "| task | method | optimizer steps per 64 reward queries (per epoch of N images) | every PPO ratio 1 | "
        "gradient clip | advantage clip | clip range | learning rate | weight decay | KL | read from | "
        "where it comes from |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, data in results["tasks"].items():
        for method, runs in data["runs"].items():
            if all(len(m) == 1 for m in runs):
                continue  # only evaluated untrained: no updates
            configs = _run_configs(out, task, method, seeds)
            structures = [update_structure(c) for c in configs] if configs else []
            if structures and all(x is not None and x == structures[0] for x in structures):
                found = structures[0]
                source = f"runs/{task}-{METHODS[method].slug}-seed*/config.json ({len(structures)} runs alike)"
            else:
                found, source = update_structure(data["configs"].get(method, {})), "its preset in results.json"
            if found is None:
                lines.append(f"| {task} | {method} | not recorded in its configs |" + " |" * 9)
                continue
            show = lambda x: "-" if x is None else f"{x:g}"
            on_policy = "-" if found["clip_range"] is None else "yes" if found["steps_per_epoch"] == 1 else "no"
            lines.append(
                f"| {task} | {method} | {found['steps_per_64_queries']:g} ({found['steps_per_epoch']} per "
                f"{found['samples_per_epoch']}) | {on_policy} | {show(found['grad_clip'])} | "
                f"{show(found['advantage_clip'])} | "
                f"{show(found['clip_range'])} | {show(found['learning_rate'])} | {show(found['weight_decay'])} | "
                f"{show(found['kl_coef'])} | {source} | {METHODS[method].update_source or '-'} |"
            )
    return lines


def write_report(results: dict, out: Path) -> None:
    """report.md: what protocol v3 says of each comparison first (its lead, its table, each method's medians), then
    v2's headline tables as published, each arm's update structure, each method's start and end, the paper's ratio,
    the alignment question, the contended runs and the figures."""
    lines = [
        *_title(results),
        *_v3_lead(results),
        *_v3_table(results),
        *_v3_methods(results),
        *_headline(results),
        *_versus(results),
        *_arms(results, out),
        *_starts_and_ends(results),
        *_paper_ratio(results),
        *_reaching_ddpo_start(results),
        *_contended(results),
        *_definitions_and_figures(results),
        *_pictures(results, out),
    ]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def _pictures(results: dict, out: Path) -> list[str]:
    """Links to each run's kept grids of the fixed evaluation set (``benchmarks.runs.keep_grids``): at the evaluation
    where it first met the target and at its end."""
    rows = []
    for task, data in results["tasks"].items():
        for method in data["runs"]:
            for seed in results["meta"]["seeds"]:
                run = run_directory(out, task, METHODS[method].slug, seed)
                links = [
                    f"[{kind}](runs/{run.name}/{kind}.png)" if (run / f"{kind}.png").is_file() else "-"
                    for kind in ("target", "end")
                ]
                if links != ["-", "-"]:
                    rows.append(f"| {task} | {method} | {seed} | {' | '.join(links)} |")
    if not rows:
        return []
    return [
        "",
        "## Pictures per run",
        "",
        "The first batch of the fixed evaluation set (its leading prompts and noise seeds, alike in every run) where "
        "the run first met the target (gain of at least 0.05 with 80% of its starting prompt accuracy kept; `-` where "
        "it never did) and at its last evaluation. Runs whose checkpoints were not kept were retrained from their "
        "committed config.json (`python -m benchmarks.retrain_grids`); grids.json says whether each retrain "
        "reproduced the committed metrics.",
        "",
        "| task | method | seed | at target | at end |",
        "|---|---|---|---|---|",
        *rows,
    ]


def _title(results: dict) -> list[str]:
    meta = results["meta"]
    seeds = meta["seeds"]
    return [
        f"# genrl benchmark: {meta['suite']} suite",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}  ",
        f"Protocol: [{meta['protocol']}](PROTOCOL.md): v2 fixed before these runs, v3 (its addendum of 2026-12-07) "
        f"before its analysis of them. Seeds {seeds[0]}-{seeds[-1]} "
        f"({len(seeds)}; the sweep's were {', '.join(map(str, meta['sweep_seeds']))}); reward queries per run "
        "(between evaluations on a fixed set of 32 images): "
        + ", ".join(f"{t} {q} ({meta['eval_queries'][t]})" for t, q in meta["queries"].items())
        + f"; finished {meta['date']}, the last invocation taking {meta['total_s'] / 60:.0f} min.",
    ]


def _headline(results: dict) -> list[str]:
    seeds = results["meta"]["seeds"]
    lines = [
        "",
        "## v2 (the protocol of 2026-12-05), as published",
        "",
        "Kept beside v3 so that nothing changes silently; v3 above supersedes its reading of the censored runs.",
        "",
        "**v2 fidelity_speedup**: per seed pair, DDPO's training wall-clock to its first evaluation that gains Δ in "
        "the task reward over its own start with at least 80% of its starting prompt accuracy, over RLCM's to the "
        "same; the geometric mean over pairs with a 95% t-interval on the log ratios. A run that never gets there is "
        "censored at its budget and its pair kept: DDPO censored makes the pair's ratio a lower bound, RLCM censored "
        "an upper bound. It is a v2 headline only if both methods learned (mean final gain at least 3 standard "
        "errors over the seeds).",
        "",
        "| task | Δ | fidelity_speedup [95% CI] | reached target (DDPO / RLCM) | censored (DDPO / RLCM / both) | "
        "= cost per query ratio [95% CI] | x query ratio [95% CI] | CPU-time ratio [95% CI] | v2 headline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, data in results["tasks"].items():
        s = data["summary"]
        if "fidelity_speedup" not in s:
            lines.append(f"| {task} | - | n/a | - | - | - | - | - | no: {s['headline_why_none']} |")
            continue
        cells = _ratio_cells(
            s, s["fidelity_speedup_reached"], s["fidelity_speedup_censored"], DDPO_PPO.name, RLCM_PPO.name, len(seeds)
        )
        lines.append(f"| {task} | {s['fidelity_delta']} | {cells} |")
    return lines


def _is_headline(summary: dict) -> str:
    return "yes" if summary["headline"] else f"no: {summary['headline_why_none']}"


def _ratio_cells(ratios: dict, reached: dict, censored: dict, slow: str, fast: str, pairs: int) -> str:
    """A comparison's cells from the fidelity ratio on: ``ratios`` holds the ``format_fidelity`` keys and the
    headline verdict; ``reached`` and ``censored`` count runs by method name."""
    ratio_keys = ("cost_per_query_ratio", "fidelity_query_ratio", "fidelity_cpu_ratio")
    return " | ".join(
        [
            format_fidelity(ratios, "fidelity_speedup"),
            f"{reached[slow]}/{pairs} / {reached[fast]}/{pairs}",
            f"{censored[slow]} / {censored[fast]} / {censored['both']}",
            *(format_fidelity(ratios, key) for key in ratio_keys),
            _is_headline(ratios),
        ]
    )


def _versus(results: dict) -> list[str]:
    """The contender against each method of the pair, as the headline is measured."""
    rows = [(task, name, v) for task, data in results["tasks"].items() for name, v in data["summary"]["versus"].items()]
    if not rows:
        return []
    lines = [
        "",
        'v2: the contender against each of the pair, measured as the headline ("A over B": B\'s time to the target '
        "over A's; censored A: an upper bound, censored B: a lower bound):",
        "",
        "| task | comparison | fidelity ratio [95% CI] | reached target (B / A) | censored (B / A / both) | "
        "= cost per query ratio [95% CI] | x query ratio [95% CI] | CPU-time ratio [95% CI] | v2 headline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, name, v in rows:
        cells = _ratio_cells(v, v["reached"], v["censored"], v["slow"], v["fast"], len(v["pairs"]))
        lines.append(f"| {task} | {name} | {cells} |")
    return lines


def _paper_ratio(results: dict) -> list[str]:
    lines = [
        "",
        "Secondary, the paper's ratio: per seed pair, DDPO's time to its final task reward (mean of its last 3 "
        "evaluations, interpolated) over RLCM's to the same, whatever the pictures look like there; a DDPO that ends "
        "at or below its start gives 0, an RLCM that never gets there is censored at its budget (an upper bound). "
        "Arithmetic mean with a 95% t-interval, every pair kept.",
        "",
        "| task | train_speedup [95% CI] | query_efficiency [95% CI] | prompt accuracy there (DDPO / RLCM) | "
        "inference_speedup (training horizon / 50 DDIM steps) |",
        "|---|---|---|---|---|",
    ]
    for task, data in results["tasks"].items():
        s = data["summary"]
        if "train_speedup" not in s:
            continue
        inference = "-"
        if "inference_speedup" in s:
            inference = f"{s['inference_speedup']:.2f} / {s.get('inference_speedup_50_ddim', float('nan')):.2f}"
            inference += " (timed under load)" if s.get("inference_speedup_under_load") else ""
        accuracy = s.get("prompt_accuracy_at_target")
        accuracy = f"{accuracy[DDPO_PPO.name]:.2f} / {accuracy[RLCM_PPO.name]:.2f}" if accuracy else "-"
        lines.append(
            f"| {task} | {format_ratio(s, 'train_speedup')} | {format_ratio(s, 'query_efficiency')} | {accuracy} | "
            f"{inference} |"
        )
    return lines


def _starts_and_ends(results: dict) -> list[str]:
    lines = [
        "",
        "Each method from its own start (the untrained model) to its end (mean of its last 3 evaluations), means over "
        "seeds; the gain with a 95% t-interval over seeds and its size in standard errors of that mean (the task "
        "reward: a composite reward's own part):",
        "",
        "| task | method | task reward start -> end (gain) | prompt accuracy start -> end (gain) | CPU/wall |",
        "|---|---|---|---|---|",
    ]
    for task, data in results["tasks"].items():
        s = data["summary"]
        for method, runs in data["runs"].items():
            shares = ", ".join("-" if np.isnan(r) else f"{r:.2f}" for r in map(cpu_per_wall, runs))  # -: untrained
            lines.append(
                f"| {task} | {method} | {format_start_end(s['eval_reward'][method])} | "
                f"{format_start_end(s['eval_prompt_accuracy'][method])} | {shares} |"
            )
    return lines


def _reaching_ddpo_start(results: dict) -> list[str]:
    lines = []
    for task, data in results["tasks"].items():
        s = data["summary"]
        if "reaches_ddpo_start" not in s:
            continue
        lines += ["", f"**{task}**: does each trained method reach DDPO's (the teacher's) starting eval reward?", ""]
        for method, r in s["reaches_ddpo_start"].items():
            when = (
                f", after {r['reward_queries']:.0f} queries and {r['wall_time_s']:.0f} s on average"
                if r["seeds_reached"]
                else ""
            )
            lines.append(f"- {method}: {r['seeds_reached']} of {r['seeds']} seeds reach {r['target']:.3f}{when}")
        lines.append(f"- DPG's query efficiency over PPO: {format_ratio(_flat(s['dpg_query_efficiency']), 'x')}")
    return lines


def _flat(measured: dict) -> dict:
    """A ``summarise_pairs`` result in the shape ``format_ratio`` reads, under the key 'x'."""
    return {"x": measured["value"], **{f"x_{k}": measured[k] for k in RATIO_PARTS}}


def _contended(results: dict) -> list[str]:
    flagged = [(task, f) for task, data in results["tasks"].items() for f in data["summary"]["contended_runs"]]
    runs = ", ".join(
        f"{t} {f['method']} seed {f['seed']} ({f['cpu_per_wall']:.2f} of {f['best_of_method']:.2f})" for t, f in flagged
    )
    return [
        "",
        "Runs whose CPU/wall ratio shows other work competing for the cores (below "
        f"{CONTENDED:.0%} of the best run of their method): " + (runs if flagged else "none."),
    ]


def _definitions_and_figures(results: dict) -> list[str]:
    lines = [
        "",
        "Definitions: docs/benchmark/PROTOCOL.md; the code is `summarise` in `benchmarks/summary.py`, the target in "
        "`benchmarks/fidelity.py`, the paper's ratio in `benchmarks/ratios.py`. Figures 6-8 evaluate the final LoRA "
        f"of seed {results['meta']['seeds'][0]}, loaded into a plain diffusers pipeline, on "
        f"{results['meta']['eval_images']} images per point; Fig. 7 samples the RLCM model trained at its preset's H "
        "at H = 2, 4, 8 (the paper trained one model per H). The frontier plots each method's mean task-reward gain "
        "against its prompt accuracy as a share of its start, one point per evaluation: a method that buys reward "
        "with the picture moves left.",
        "",
        "![fidelity frontier](fig_frontier.png)",
        "![reward vs queries](fig4_reward_vs_queries.png)",
        "![reward vs wall-clock](fig5_reward_vs_wallclock.png)",
    ]
    if any(data.get("evaluation") for data in results["tasks"].values()):
        lines += [
            "![inference budget](fig6_inference_budget.png)",
            "![LCM steps](fig7_lcm_steps.png)",
            "![held-out prompts](fig8_heldout.png)",
            "",
            f"Samples of each method (seed {results['meta']['seeds'][0]}) on the same prompts and noise: untrained, "
            "its checkpoint where it first met the target (where that was not kept, or never met: the best that kept "
            "the picture, `--keep-best`; none where it is the final one) and the final one; each caption names the "
            "row.",
            "",
            *[f"![samples {task}](samples_{task}.png)" for task in results["tasks"]],
        ]
    return lines
