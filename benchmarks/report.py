"""The benchmark's outputs from its results: results.json, the figures and report.md."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.figures import plot_curves, plot_evaluations
from benchmarks.methods import DDPO_PPO, RLCM_PPO
from benchmarks.summary import CONTENDED, RATIO_PARTS, cpu_per_wall
from genrl.rundir import atomic_write_text


def write_outputs(results: dict, out: Path) -> None:
    """results.json, the figures and report.md, from results whose tasks carry their summaries."""
    results["summary"] = {task: data["summary"] for task, data in results["tasks"].items()}
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))  # a failed rewrite keeps the old one
    plot_curves(results, "reward_queries", "reward queries", out / "fig4_reward_vs_queries.png")
    plot_curves(results, "wall_time_s", "training wall-clock (s)", out / "fig5_reward_vs_wallclock.png")
    plot_evaluations(results, out)
    write_report(results, out)


def format_ratio(summary: dict, key: str) -> str:
    """A summary's ratio ``key`` with its interval, or why there is none; the seed pairs left out, if any."""
    value = summary[key]
    if value is None:
        return f"n/a ({summary[f'{key}_why_none']})"
    low, high = summary[f"{key}_ci95"]
    bound = ">= " if summary[f"{key}_lower_bound"] else ""
    pairs = summary[f"{key}_pairs"]
    left_out = [p["why_none"] for p in pairs if p["left_out"]]
    why = "; ".join(sorted(set(left_out)))
    measured = f" ({len(pairs) - len(left_out)} of {len(pairs)} seed pairs; left out: {why})"
    return f"{bound}{value:.2f} [{low:.2f}, {high:.2f}]" + (measured if left_out else "")


def format_start_end(values: dict | None) -> str:
    if values is None:
        return "-"
    low, high = values["gain_ci95"]
    return f"{values['start']:.3f} -> {values['end']:.3f} ({values['gain']:+.3f} [{low:+.3f}, {high:+.3f}])"


def write_report(results: dict, out: Path) -> None:
    """report.md: the headline table, each method's start and end, the alignment question, the contended runs and
    the figures."""
    lines = [
        *_headline(results),
        *_starts_and_ends(results),
        *_reaching_ddpo_start(results),
        *_contended(results),
        *_definitions_and_figures(results),
    ]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def _headline(results: dict) -> list[str]:
    meta = results["meta"]
    lines = [
        f"# genrl benchmark: {meta['suite']} suite",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}  ",
        f"Seeds: {meta['seeds']}; reward queries per run (between evaluations on a fixed set of 32 images): "
        + ", ".join(f"{t} {q} ({meta['eval_queries'][t]})" for t, q in meta["queries"].items())
        + f"; finished {meta['date']}, the last invocation taking {meta['total_s'] / 60:.0f} min.",
        "",
        "| task | train_speedup [95% CI] | query_efficiency [95% CI] | prompt accuracy at the target (DDPO / RLCM) | "
        "DDPO's gain in standard errors | inference_speedup (training horizon / 50 DDIM steps) |",
        "|---|---|---|---|---|---|",
    ]
    for task, data in results["tasks"].items():
        s = data["summary"]
        inference = "-"
        if "inference_speedup" in s:
            inference = f"{s['inference_speedup']:.2f} / {s.get('inference_speedup_50_ddim', float('nan')):.2f}"
        accuracy = s.get("prompt_accuracy_at_target")
        accuracy = f"{accuracy[DDPO_PPO.name]:.2f} / {accuracy[RLCM_PPO.name]:.2f}" if accuracy else "-"
        lines.append(
            f"| {task} | {format_ratio(s, 'train_speedup')} | {format_ratio(s, 'query_efficiency')} | {accuracy} | "
            f"{s['ddpo_gain_in_standard_errors']:.1f} | {inference} |"
        )
    return lines


def _starts_and_ends(results: dict) -> list[str]:
    lines = [
        "",
        "Each method from its own start (the untrained model) to its end (mean of its last 3 evaluations), means over "
        "seeds, the gain with a bootstrap 95% interval over seeds:",
        "",
        "| task | method | eval reward start -> end (gain) | prompt accuracy start -> end (gain) | CPU/wall |",
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
        lines += ["", f"**{task}**: does each RLCM method reach DDPO's starting eval reward?", ""]
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
    # Names run.py, where `summarise` was when docs/benchmark/report.md was written: another path changes that report.
    lines = [
        "",
        "Definitions: `summarise` in `benchmarks/run.py` and `benchmarks/ratios.py`. A ratio's target is DDPO's final "
        "eval reward in each seed pair; `>=` marks a lower bound (RLCM started past the target). Figures 6-8 evaluate "
        "the final LoRA of seed 0, loaded into a plain diffusers pipeline, on "
        f"{results['meta']['eval_images']} images per point; Fig. 7 samples the RLCM model trained at its preset's H "
        "at H = 2, 4, 8 (the paper trained one model per H).",
        "",
        "![reward vs queries](fig4_reward_vs_queries.png)",
        "![reward vs wall-clock](fig5_reward_vs_wallclock.png)",
    ]
    if any(data.get("evaluation") for data in results["tasks"].values()):
        lines += [
            "![inference budget](fig6_inference_budget.png)",
            "![LCM steps](fig7_lcm_steps.png)",
            "![held-out prompts](fig8_heldout.png)",
            "",
            *[f"![samples {task}](samples_{task}.png)" for task in results["tasks"]],
        ]
    return lines
