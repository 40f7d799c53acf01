"""Protocol v3 in the summary, the structure check and the report (docs/benchmark/PROTOCOL.md, "Protocol v3")."""

import json

import pytest

from benchmarks.report import format_v3, update_structure, write_report
from benchmarks.results_check import check_summaries
from benchmarks.runs import Malformed
from benchmarks.summary import NOT_ESTIMABLE, NOT_REACHED, kept_best_gain, summarise
from genrl.config_file import config_to_json
from genrl.presets import PRESETS

BUDGET = 160
"""The runs here: evaluated every 32 queries up to 160."""


def _run(rate: float, seconds_per_query: float = 0.1, accuracy_drop: float = 0.01, start: float = 0.0) -> list[dict]:
    """A run whose eval reward rises ``rate`` a query from ``start`` and whose prompt accuracy falls
    ``accuracy_drop`` an evaluation from 0.8; it reaches the target (0.05) at its first evaluation past 0.05/rate."""
    return [
        {
            "epoch": i,
            "reward_queries": 32 * i,
            "wall_time_s": 32 * i * seconds_per_query,
            "cpu_time_s": 32 * i * seconds_per_query * 2,
            "eval_reward_mean": start + rate * 32 * i,
            "eval_reward_std": 0.1,
            "eval_prompt_accuracy": 0.8 - accuracy_drop * i,
        }
        for i in range(BUDGET // 32 + 1)
    ]


def _task(ddpo: tuple[float, ...], rlcm: tuple[float, ...]) -> dict:
    return {
        "runs": {
            "RLCM (PPO)": [_run(r, seconds_per_query=0.02) for r in rlcm],
            "DDPO (PPO)": [_run(r, start=0.05) for r in ddpo],
        },
        "configs": {
            "RLCM (PPO)": config_to_json(PRESETS["shapes-rlcm-compression"]),
            "DDPO (PPO)": config_to_json(PRESETS["shapes-ddpo-compression"]),
        },
    }


def _summarise(task: dict) -> dict:
    return summarise("compression", task, list(range(10, 10 + len(task["runs"]["RLCM (PPO)"]))))


def _results(task: dict) -> dict:
    seeds = list(range(10, 10 + len(task["runs"]["RLCM (PPO)"])))
    meta = dict(suite="shapes", command="x", machine="m", seeds=seeds, sweep_seeds=[0, 1], eval_images=8)
    meta.update(queries={"compression": BUDGET}, eval_queries={"compression": 32}, protocol="PROTOCOL.md")
    summary = summarise("compression", task, seeds)
    return {
        "tasks": {"compression": {**task, "summary": summary}},
        "meta": {**meta, "date": "d", "total_s": 1},
        "summary": {"compression": summary},
    }


# DDPO reaches the target on 1 of 4 seeds (at 64 queries, 6.4 s); RLCM on all 4 at its first evaluation (32, 0.64 s).
SLOW_DDPO = _task(ddpo=(0.001, 0.0, 0.0, 0.0), rlcm=(0.004, 0.004, 0.002, 0.003))


def test_v3_reads_a_comparison_whose_slow_method_rarely_reaches_the_target():
    summary = _summarise(SLOW_DDPO)
    v3 = summary["v3"]
    ddpo, rlcm = v3["methods"]["DDPO (PPO)"], v3["methods"]["RLCM (PPO)"]
    assert (ddpo["reached"], ddpo["seeds"], rlcm["reached"]) == (1, 4, 4)
    # DDPO's curve stays at 3/4: no median, only "beyond the budget".
    assert ddpo["median"]["reward_queries"]["median"] == NOT_REACHED
    assert ddpo["median"]["reward_queries"]["followed"] == BUDGET
    assert ddpo["median"]["reward_queries"]["ci95"][1] is None
    assert rlcm["median"]["reward_queries"] == {"median": 32, "ci95": [32, 32], "followed": 32, "budget": BUDGET}
    # Within the budget, every censoring at it: the means of min(t, 160), 136 over 32.
    queries = v3["restricted"]["reward_queries"]
    assert queries["tau"] == BUDGET and queries["means"] == {"DDPO (PPO)": 136, "RLCM (PPO)": 32}
    assert queries["ratio"] == pytest.approx(136 / 32)
    low, high = queries["ci95"]
    assert low <= queries["ratio"] <= high
    # Wall-clock: tau is the shortest complete run of either (RLCM's, 3.2 s), which DDPO never reaches within.
    wall = v3["restricted"]["wall_time_s"]
    assert wall["tau"] == pytest.approx(3.2) and wall["ratio"] == pytest.approx(3.2 / 0.64)
    assert v3["median_ratio"] == NOT_ESTIMABLE
    assert v3["median_ratio_why_not"] == "DDPO (PPO) reached the target on 1 of 4 seeds, fewer than half"
    assert v3["sign_test"] == {
        "wins": {"RLCM (PPO)": 4, "DDPO (PPO)": 0},
        "ties": 0,
        "both_censored": 0,
        "informative": 4,
        "p": pytest.approx(2 / 2**4),
    }
    # Learned at the kept best: DDPO's gains 0.16, 0, 0, 0 are 1 standard error.
    assert ddpo["learned"]["gains"] == pytest.approx([0.16, 0, 0, 0])
    assert ddpo["learned"]["gain_standard_errors"] == pytest.approx(1.0) and not ddpo["learned"]["learned"]
    assert not v3["headline"]
    assert v3["headline_why_none"].startswith("no unrestricted speedup: DDPO (PPO) reached the target on 1 of 4")
    assert (
        "DDPO (PPO) did not learn at its kept best (mean gain +0.040, 1.0 standard errors)" in v3["headline_why_none"]
    )


def test_v3_keeps_every_v2_field_as_it_was():
    summary = _summarise(SLOW_DDPO)
    without = {k: v for k, v in summary.items() if k != "v3"}
    for comparison in without["versus"].values():
        comparison.pop("v3")
    from benchmarks import summary as module

    original = module.v3
    try:
        module.v3 = lambda *args: {}  # the summary with v3 switched off: v2's fields alone
        v2_only = _summarise(SLOW_DDPO)
    finally:
        module.v3 = original
    v2_only.pop("v3")
    assert json.dumps(without, sort_keys=True) == json.dumps(v2_only, sort_keys=True)


def test_a_v3_headline_where_both_reach_on_half_their_seeds_and_learned():
    # DDPO reaches at 64 queries (6.4 s) on every seed, RLCM at 32 (0.64 s): the medians' ratios are 2 and 10.
    summary = _summarise(_task(ddpo=(0.001,) * 4, rlcm=(0.004, 0.004, 0.002, 0.003)))
    v3 = summary["v3"]
    assert v3["headline"] and v3["headline_why_none"] is None
    ratios = v3["median_ratio"]
    assert ratios["reward_queries"] == {"ratio": 2.0, "ci95": [2.0, 2.0]}
    assert ratios["wall_time_s"]["ratio"] == pytest.approx(10)
    # DDPO's kept-best gains are all 0.16: no spread, which learned (any non-zero mean does).
    assert v3["methods"]["DDPO (PPO)"]["learned"]["gain_standard_errors"] is None
    assert v3["methods"]["DDPO (PPO)"]["learned"]["learned"]
    assert format_v3(v3).startswith(
        "**v3 headline: RLCM (PPO) reaches the target sooner than DDPO (PPO), 2.00x [2.00, 2.00] in reward queries"
    )


def test_no_v3_headline_where_v2_had_one_on_pairs_censored_on_both_sides():
    # Both methods gain steadily but below 0.05 within the budget: v2's learned rule (final gain, 3 SE) holds for
    # both, so v2 calls its ratio (the cost ratio of censored pairs) a headline; v3 does not.
    task = _task(ddpo=(0.0002, 0.00025, 0.00028, 0.0003), rlcm=(0.0002, 0.00022, 0.00026, 0.0003))
    summary = _summarise(task)
    assert summary["headline"]  # v2, as published
    v3 = summary["v3"]
    assert v3["median_ratio"] == NOT_ESTIMABLE and not v3["headline"]
    assert v3["sign_test"]["informative"] == 0 and v3["sign_test"]["both_censored"] == 4
    assert v3["sign_test"]["p"] is None
    assert v3["restricted"]["reward_queries"]["ratio"] == 1.0  # both censored at the budget: nothing sooner
    check_summaries(_results(task))


def test_the_contenders_comparisons_get_v3_too():
    task = json.loads(json.dumps(SLOW_DDPO))
    task["runs"]["Flow-GRPO"] = [_run(0.0, seconds_per_query=0.05) for _ in range(4)]  # never gains
    versus = _summarise(task)["versus"]
    over_ddpo = versus["Flow-GRPO over DDPO (PPO)"]
    assert over_ddpo["v3"]["fast"] == "Flow-GRPO" and over_ddpo["v3"]["slow"] == "DDPO (PPO)"
    # DDPO got there first in its one informative pair; the other 3 are both censored and say nothing.
    assert over_ddpo["v3"]["sign_test"]["wins"] == {"Flow-GRPO": 0, "DDPO (PPO)": 1}
    assert over_ddpo["v3"]["sign_test"]["both_censored"] == 3
    assert over_ddpo["v3"]["restricted"]["reward_queries"]["ratio"] == pytest.approx(136 / 160)  # below 1
    assert versus["RLCM (PPO) over Flow-GRPO"]["v3"]["methods"]["Flow-GRPO"]["reached"] == 0


def test_learned_is_judged_at_the_best_evaluation_that_kept_the_picture():
    wrecked = _run(0.004, accuracy_drop=0.2)  # 0.8, 0.6, ...: only the start keeps 80% of it
    assert kept_best_gain([{**m, "eval_task_reward": m["eval_reward_mean"]} for m in wrecked]) == 0
    kept_then_wrecked = _run(0.004, accuracy_drop=0.01)
    kept_then_wrecked[-1]["eval_prompt_accuracy"] = 0.1  # the end gains most but lost the picture
    gain = kept_best_gain([{**m, "eval_task_reward": m["eval_reward_mean"]} for m in kept_then_wrecked])
    assert gain == pytest.approx(0.004 * 128)


def _bad(path: tuple, value: object):
    results = json.loads(json.dumps(_results(SLOW_DDPO)))
    place = results["tasks"]["compression"]["summary"]["v3"]
    for key in path[:-1]:
        place = place[key]
    place[path[-1]] = value
    return results


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        (("restricted", "reward_queries", "ratio"), float("nan"), '["ratio"] should be a positive number, not NaN'),
        (("restricted", "wall_time_s", "ci95"), [1.0, float("inf")], '["ci95"][1] should be a number, not Infinity'),
        (("methods", "DDPO (PPO)", "median", "reward_queries", "median"), "many", 'a positive number or "not reached"'),
        (("sign_test", "p"), float("nan"), '["sign_test"]["p"] should be a number or null, not NaN'),
        (("headline",), True, 'is a headline, but its speedup is "not estimable"'),
        (("median_ratio_why_not",), None, '["median_ratio_why_not"] should be a string, not null'),
    ],
)
def test_the_structure_check_knows_v3_and_refuses_nan(path, value, says):
    check_summaries(_results(SLOW_DDPO))
    with pytest.raises(Malformed, match=".*") as error:
        check_summaries(_bad(path, value))
    assert says in str(error.value) and str(error.value).startswith('["tasks"]["compression"]["summary"]["v3"]')


def test_a_comparison_without_v3_is_malformed():
    results = json.loads(json.dumps(_results(SLOW_DDPO)))
    del results["tasks"]["compression"]["summary"]["v3"]
    with pytest.raises(Malformed, match='summary"\\] has no "v3"'):
        check_summaries(results)


def test_the_report_leads_with_v3_and_keeps_v2_labelled(tmp_path):
    results = _results(SLOW_DDPO)
    write_report(results, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert report.index("## What protocol v3 says") < report.index("## v2 (the protocol of 2026-12-05), as published")
    assert '- compression, RLCM (PPO) over DDPO (PPO): **no v3 headline, no "X times sooner"**' in report
    assert "Reached the target: DDPO (PPO) 1/4, RLCM (PPO) 4/4." in report
    assert "within 160 reward queries 4.25x [" in report
    assert "RLCM (PPO) first in 4 of 4 informative pairs, DDPO (PPO) in 0, ties 0" in report
    assert "sign test p = 0.12" in report
    assert "| compression | DDPO (PPO) | 1/4 | not reached (> 160) [" in report
    assert "| v2 headline |" in report and "**v2 fidelity_speedup**" in report
    v2 = results["tasks"]["compression"]["summary"]
    low, high = v2["fidelity_speedup_ci95"]
    assert f"| compression | 0.05 | {v2['fidelity_speedup']:.2f} [{low:.2f}, {high:.2f}] | 1/4 / 4/4 |" in report
    # The arms: RLCM steps twice per 64 queries with grad clip 5 and advantage clip 10; DDPO once, with 1 and 5.
    assert "| compression | RLCM (PPO) | 2 (1 per 32) | yes | 5 | 10 | 0.0001 | 0.003 | 0 | 0 | its preset" in report
    assert (
        "| compression | DDPO (PPO) | 1 (1 per 64) | yes | 1 | 5 | 0.0001 | 0.003 | 0.0001 | 0 | its preset" in report
    )


def test_the_update_structure_of_each_arm():
    structure = lambda preset: update_structure(config_to_json(PRESETS[preset]))
    assert structure("shapes-rlcm-compression")["steps_per_64_queries"] == 2
    assert structure("shapes-ddpo-compression")["steps_per_64_queries"] == 1
    assert structure("shapes-flow-compression")["steps_per_64_queries"] == 4
    dpg = structure("shapes-dpg-alignment")
    assert dpg["steps_per_64_queries"] == 2 and dpg["clip_range"] is None and dpg["grad_clip"] == 5
    assert update_structure({"num_steps": 4}) is None  # a config that does not say


def test_the_committed_results_carry_v3_for_every_comparison():
    import math
    from pathlib import Path

    path = Path(__file__).parents[2] / "docs" / "benchmark" / "results.json"
    results = json.loads(path.read_text())
    check_summaries(results)
    for task, summary in results["summary"].items():
        comparisons = ([summary["v3"]] if "v3" in summary else []) + [v["v3"] for v in summary["versus"].values()]
        assert comparisons, task
        for v3 in comparisons:
            assert not (v3["headline"] and v3["median_ratio"] == NOT_ESTIMABLE)
            assert all(math.isfinite(r["ratio"]) for r in v3["restricted"].values())
