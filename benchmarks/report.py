"""The benchmark's outputs from its results: results.json, the figures and report.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.figures import plot_curves, plot_evaluations, plot_frontier
from benchmarks.methods import DDPO_PPO, RLCM_PPO
from benchmarks.summary import CONTENDED, RATIO_PARTS, cpu_per_wall
from genrl.rundir import atomic_write_text


def write_outputs(results: dict, out: Path) -> None:
    """results.json, the figures and report.md, from results whose tasks carry their summaries."""
    results["summary"] = {task: data["summary"] for task, data in results["tasks"].items()}
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


def format_headline(summary: dict) -> str:
    """One line: the fidelity speed-up, its interval and censored pairs, and whether it is a headline."""
    if "fidelity_speedup" not in summary:
        return f"no fidelity speed-up ({summary['headline_why_none']})"
    censored = summary["fidelity_speedup_censored"]
    line = (
        f"fidelity_speedup {format_fidelity(summary, 'fidelity_speedup')} over "
        f"{len(summary['fidelity_speedup_pairs'])} seed pairs (censored: DDPO {censored[DDPO_PPO.name]}, RLCM "
        f"{censored[RLCM_PPO.name]}, both {censored['both']})"
    )
    return line if summary["headline"] else f"{line}; not a headline: {summary['headline_why_none']}"


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


def write_report(results: dict, out: Path) -> None:
    """report.md: the headline table, each method's start and end, the paper's ratio, the alignment question, the
    contended runs and the figures."""
    lines = [
        *_headline(results),
        *_versus(results),
        *_starts_and_ends(results),
        *_paper_ratio(results),
        *_reaching_ddpo_start(results),
        *_contended(results),
        *_definitions_and_figures(results),
    ]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def _headline(results: dict) -> list[str]:
    meta = results["meta"]
    seeds = meta["seeds"]
    lines = [
        f"# genrl benchmark: {meta['suite']} suite",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}  ",
        f"Protocol: [{meta['protocol']}](PROTOCOL.md), fixed before these runs. Seeds {seeds[0]}-{seeds[-1]} "
        f"({len(seeds)}; the sweep's were {', '.join(map(str, meta['sweep_seeds']))}); reward queries per run "
        "(between evaluations on a fixed set of 32 images): "
        + ", ".join(f"{t} {q} ({meta['eval_queries'][t]})" for t, q in meta["queries"].items())
        + f"; finished {meta['date']}, the last invocation taking {meta['total_s'] / 60:.0f} min.",
        "",
        "**fidelity_speedup**: per seed pair, DDPO's training wall-clock to its first evaluation that gains Δ in the "
        "task reward over its own start with at least 80% of its starting prompt accuracy, over RLCM's to the same; "
        "the geometric mean over pairs with a 95% t-interval on the log ratios. A run that never gets there is "
        "censored at its budget and its pair kept: DDPO censored makes the pair's ratio a lower bound, RLCM censored "
        "an upper bound. It is a headline only if both methods learned (mean final gain at least 3 standard errors "
        "over the seeds).",
        "",
        "| task | Δ | fidelity_speedup [95% CI] | reached target (DDPO / RLCM) | censored (DDPO / RLCM / both) | "
        "= cost per query ratio [95% CI] | x query ratio [95% CI] | CPU-time ratio [95% CI] | headline |",
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
        'The contender against each of the pair, measured as the headline ("A over B": B\'s time to the target over '
        "A's; censored A: an upper bound, censored B: a lower bound):",
        "",
        "| task | comparison | fidelity ratio [95% CI] | reached target (B / A) | censored (B / A / both) | "
        "= cost per query ratio [95% CI] | x query ratio [95% CI] | CPU-time ratio [95% CI] | headline |",
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
            "Samples of each method on the same prompts and noise: untrained, the best checkpoint that kept the "
            "picture (`--keep-best`, where it is not the final one) and the final one; each caption names the row.",
            "",
            *[f"![samples {task}](samples_{task}.png)" for task in results["tasks"]],
        ]
    return lines
