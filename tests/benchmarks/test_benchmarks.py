"""The benchmark suite: its summary of evaluation curves, its report, resuming an interrupted suite, its errors."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import benchmarks.evaluation as evaluation
import benchmarks.report as report
import benchmarks.run as suite
from benchmarks.figures import plot_curves, plot_evaluations, plot_frontier
from benchmarks.report import write_report
from benchmarks.run import Args, main
from benchmarks.summary import summarise
from genrl.config import replace_config
from genrl.presets import PRESETS


def _metrics(
    rate: float, start: float = 0.0, evaluations: int = 6, seconds_per_query: float = 0.1, accuracy_drop: float = 0.01
) -> list[dict]:
    """A run evaluated every 32 queries, its eval reward rising at ``rate`` per query, its prompt accuracy falling
    ``accuracy_drop`` an evaluation from 0.8."""
    return [
        {
            "epoch": i,
            "reward_queries": 32 * i,
            "wall_time_s": 32 * i * seconds_per_query,
            "cpu_time_s": 32 * i * seconds_per_query * 1.9,
            "eval_reward_mean": start + rate * 32 * i,
            "eval_reward_std": 0.16,
            "eval_prompt_accuracy": 0.8 - accuracy_drop * i,
        }
        for i in range(evaluations)
    ]


def _task(ddpo_rate: float = 0.001, rlcm_rates: tuple[float, ...] = (0.004, 0.002)) -> dict:
    steps = lambda t, hs: {str(h): {"reward": 0.1 * h, "seconds_per_image": t * h} for h in hs}
    return {
        # RLCM: faster per query than DDPO (0.02 s against 0.1 s); one seed pair per RLCM rate.
        "runs": {
            "RLCM (PPO)": [_metrics(rate, seconds_per_query=0.02) for rate in rlcm_rates],
            "DDPO (PPO)": [_metrics(ddpo_rate, start=0.05) for _ in rlcm_rates],
        },
        "configs": {"RLCM (PPO)": {"num_steps": 4}, "DDPO (PPO)": {"num_steps": 20, "eval_size": 16}},
        "evaluation": {
            "RLCM (PPO)": {"steps": steps(0.01, (2, 4, 8)), "trained_reward": 0.4, "heldout_reward": 0.3},
            "DDPO (PPO)": {"steps": steps(0.1, (5, 10, 20, 50)), "trained_reward": 0.8, "heldout_reward": 0.5},
        },
    }


def _summarise(task: dict) -> dict:
    return summarise("compression", task, list(range(10, 10 + len(task["runs"]["RLCM (PPO)"]))))


def _results(task: dict) -> dict:
    seeds = list(range(10, 10 + len(task["runs"]["RLCM (PPO)"])))
    meta = dict(suite="shapes", command="x", machine="m", seeds=seeds, sweep_seeds=[0, 1], eval_images=8)
    meta.update(queries={"compression": 160}, eval_queries={"compression": 32}, protocol="docs/benchmark/PROTOCOL.md")
    summary = summarise("compression", task, seeds)
    return {"tasks": {"compression": {**task, "summary": summary}}, "meta": {**meta, "date": "d", "total_s": 1}}


def test_the_fidelity_speedup_times_each_run_to_a_fixed_gain_with_the_picture_kept():
    summary = _summarise(_task(rlcm_rates=(0.004, 0.001)))
    # Delta 0.05: DDPO (0.001 a query) first gains it at its evaluation at 64 queries (6.4 s); RLCM seed 10 (0.004)
    # at 32 queries (0.64 s), seed 11 (0.001) at 64 (1.28 s). Accuracy there is far above 80% of 0.8.
    assert [p["wall"] for p in summary["fidelity_speedup_pairs"]] == [pytest.approx(10), pytest.approx(5)]
    assert summary["fidelity_speedup"] == pytest.approx(50**0.5)  # the geometric mean
    logs = np.log([10, 5])
    expected = stats.ttest_1samp(logs, 0).confidence_interval(0.95)  # scipy's t-interval, on the log ratios
    assert summary["fidelity_speedup_ci95"] == pytest.approx(list(np.exp([expected.low, expected.high])))
    assert summary["fidelity_query_ratio"] == pytest.approx((2 * 1) ** 0.5)
    assert summary["cost_per_query_ratio"] == pytest.approx(5)  # x the query ratio = the speed-up, here exactly
    assert summary["fidelity_cpu_ratio"] == pytest.approx(summary["fidelity_speedup"])
    assert summary["fidelity_speedup_censored"] == {"DDPO (PPO)": 0, "RLCM (PPO)": 0, "both": 0}
    assert summary["fidelity_speedup_reached"] == {"DDPO (PPO)": 2, "RLCM (PPO)": 2}
    # RLCM's two seeds end 0.512 and 0.128 up: 1.7 standard errors of their mean, short of the 3 a headline needs.
    why = "RLCM (PPO) (its mean final gain +0.320 is 1.7 standard errors, within 160 reward queries)"
    assert not summary["headline"] and why in summary["headline_why_none"]
    # A third seed at 0.003 a query: 0.512, 0.128, 0.384, 3.02 standard errors; DDPO's gains are all the same.
    assert _summarise(_task(rlcm_rates=(0.004, 0.001, 0.003)))["headline"]


def test_the_contender_is_timed_against_each_of_the_pair_as_the_headline_is(tmp_path):
    task = _task(rlcm_rates=(0.004, 0.001))
    # Flow-GRPO: 0.05 s a query; seed 10 gains 0.05 at its evaluation at 32 queries (1.6 s), seed 11 never does.
    task["runs"]["Flow-GRPO"] = [_metrics(0.002, seconds_per_query=0.05), _metrics(0.0, seconds_per_query=0.05)]
    summary = _summarise(task)
    versus = summary["versus"]
    assert list(versus) == ["Flow-GRPO over DDPO (PPO)", "RLCM (PPO) over Flow-GRPO"]
    over_ddpo, rlcm_over = versus["Flow-GRPO over DDPO (PPO)"], versus["RLCM (PPO) over Flow-GRPO"]
    # DDPO reaches it at 6.4 s on both seeds; Flow-GRPO seed 11 is censored at its budget, 160 queries (8 s).
    assert [p["wall"] for p in over_ddpo["pairs"]] == [pytest.approx(6.4 / 1.6), pytest.approx(6.4 / 8)]
    assert [p["bound"] for p in over_ddpo["pairs"]] == [None, "upper"]
    assert over_ddpo["censored"] == {"DDPO (PPO)": 0, "Flow-GRPO": 1, "both": 0}
    assert over_ddpo["fidelity_speedup"] == pytest.approx((4 * 0.8) ** 0.5)
    # RLCM: 0.64 s and 1.28 s; Flow-GRPO's censored seed makes that pair a lower bound.
    assert [p["wall"] for p in rlcm_over["pairs"]] == [pytest.approx(1.6 / 0.64), pytest.approx(8 / 1.28)]
    assert rlcm_over["reached"] == {"Flow-GRPO": 1, "RLCM (PPO)": 2}
    assert rlcm_over["cost_per_query_ratio"] == pytest.approx(2.5)
    assert not rlcm_over["headline"] and "Flow-GRPO (its mean final gain" in rlcm_over["headline_why_none"]
    # The pair's headline is measured as before, untouched by the third method.
    assert summary["fidelity_speedup"] == pytest.approx(
        _summarise(_task(rlcm_rates=(0.004, 0.001)))["fidelity_speedup"]
    )
    results = _results(task)
    write_report(results, tmp_path)
    report = (tmp_path / "report.md").read_text()
    low, high = over_ddpo["fidelity_speedup_ci95"]
    assert (
        f"| compression | Flow-GRPO over DDPO (PPO) | {over_ddpo['fidelity_speedup']:.2f} [{low:.2f}, {high:.2f}] | "
        "2/2 / 1/2 | 0 / 1 / 0 |" in report
    )


def test_where_the_baseline_is_only_a_reference_the_contender_is_timed_against_rlcm_alone():
    task = _task(rlcm_rates=(0.004, 0.001))
    task["runs"]["DDPO (PPO)"] = [m[:1] for m in task["runs"]["DDPO (PPO)"]]  # evaluated untrained only
    task["runs"]["Flow-GRPO"] = [_metrics(0.002, seconds_per_query=0.05) for _ in range(2)]
    assert list(_summarise(task)["versus"]) == ["RLCM (PPO) over Flow-GRPO"]


def test_the_contender_trains_on_every_task_of_a_full_run_and_not_in_a_quick_one():
    from benchmarks.methods import FLOW_GRPO, lineup

    for task in ("compression", "incompression", "alignment"):
        assert FLOW_GRPO in lineup("shapes", task, quick=False)
        assert FLOW_GRPO not in lineup("shapes", task, quick=True)
        assert FLOW_GRPO not in lineup("shapes", task, quick=False, contenders=False)
    assert FLOW_GRPO.config("shapes", "compression") == PRESETS["shapes-flow-compression"]
    assert FLOW_GRPO.config("paper", "aesthetic") == PRESETS["flow-grpo-aesthetic"]


def test_a_run_that_misses_the_target_is_censored_at_its_budget_and_its_pair_kept():
    task = _task()
    task["runs"]["DDPO (PPO)"][1] = _metrics(0.0, start=0.05)  # never gains: censored at its 160 queries, 16 s
    task["runs"]["RLCM (PPO)"][0] = _metrics(0.004, seconds_per_query=0.02, accuracy_drop=0.2)  # wrecks the picture
    summary = _summarise(task)
    pairs = summary["fidelity_speedup_pairs"]
    # RLCM seed 10 gains 0.128 by 32 queries but keeps 0.6 of 0.8 there (< 80%), and less later: censored, 3.2 s.
    assert pairs[0]["bound"] == "upper" and pairs[0]["RLCM (PPO)"]["censored"]
    assert pairs[0]["wall"] == pytest.approx(6.4 / 3.2)
    assert pairs[1]["bound"] == "lower" and pairs[1]["wall"] == pytest.approx(16 / 0.64)
    assert summary["fidelity_speedup"] == pytest.approx((2 * 25) ** 0.5)  # both pairs kept
    assert summary["fidelity_speedup_censored"] == {"DDPO (PPO)": 1, "RLCM (PPO)": 1, "both": 0}


def test_no_headline_when_a_method_does_not_learn_over_the_seeds():
    task = _task(rlcm_rates=(0.004, 0.002, 0.003))
    task["runs"]["DDPO (PPO)"] = [_metrics(r, start=0.05) for r in (0.0005, -0.0004, 0.0)]
    summary = _summarise(task)
    gains = summary["eval_reward"]["DDPO (PPO)"]["gains"]
    assert gains == pytest.approx([0.064, -0.0512, 0.0])  # end: the mean of the evaluations at 96, 128, 160
    expected = stats.ttest_1samp(gains, 0)
    assert summary["eval_reward"]["DDPO (PPO)"]["gain_standard_errors"] == pytest.approx(expected.statistic)
    assert not summary["headline"]
    assert summary["headline_why_none"].startswith("did not learn on the benchmark seeds: DDPO (PPO) (its mean")
    assert summary["fidelity_speedup"] is not None  # still measured, and shown as secondary


def test_a_composite_reward_is_judged_by_the_tasks_own_part():
    task = _task()
    for run in task["runs"]["RLCM (PPO)"]:  # the composite rises, the JPEG part does not
        for m in run:
            m["eval_reward_parts"] = {"jpeg_compressibility": 0.0, "shapes_alignment": m["eval_reward_mean"]}
    summary = _summarise(task)
    assert summary["fidelity_speedup_censored"]["RLCM (PPO)"] == 2
    assert summary["eval_reward"]["RLCM (PPO)"]["gain"] == 0


def test_interleaved_inference_timings_replace_the_single_ones_and_a_loaded_machine_is_flagged():
    task = _task()
    task["inference_timing"] = {"ratio": 7.0, "ratio_range": [6.0, 8.0], "under_load": True}
    summary = _summarise(task)
    assert summary["inference_speedup"] == 7.0 and summary["inference_speedup_range"] == [6.0, 8.0]
    assert summary["inference_speedup_50_ddim"] == pytest.approx(7.0 * 50 / 20)  # DDPO's own 50-step over 20-step
    assert summary["inference_speedup_under_load"] is True
    results = {"tasks": {"compression": {**task, "summary": summary}}}
    assert any("7.00 / 17.50 (timed under load)" in line for line in report._paper_ratio(results))


def test_the_papers_ratio_keeps_every_pair():
    summary = _summarise(_task())
    # DDPO: 0.05 + 0.001 q, final = mean of q = 96, 128, 160 -> 0.178, reached at q = 128, 12.8 s.
    # RLCM seed 10: 0.004 q reaches 0.178 at q = 44.5 (0.89 s); seed 11: 0.002 q at q = 89 (1.78 s).
    assert summary["query_efficiency"] == pytest.approx((128 / 44.5 + 128 / 89) / 2)
    assert summary["train_speedup"] == pytest.approx((12.8 / 0.89 + 12.8 / 1.78) / 2)
    expected = stats.ttest_1samp([12.8 / 0.89, 12.8 / 1.78], 0).confidence_interval(0.95)
    assert summary["train_speedup_ci95"] == pytest.approx([expected.low, expected.high])
    assert summary["train_speedup_censored"] == 0
    reward = summary["eval_reward"]["DDPO (PPO)"]
    assert (reward["start"], reward["end"], reward["gain"]) == pytest.approx((0.05, 0.178, 0.128))
    assert summary["inference_speedup"] == pytest.approx((0.1 * 20) / (0.01 * 4))
    assert summary["inference_speedup_50_ddim"] == pytest.approx((0.1 * 50) / (0.01 * 4))
    assert summary["contended_runs"] == []
    # Accuracy falls 0.01 an evaluation (32 queries): DDPO reaches at q = 128, RLCM at 44.5 and 89.
    assert summary["prompt_accuracy_at_target"] == {
        "DDPO (PPO)": pytest.approx(0.76),
        "RLCM (PPO)": pytest.approx(0.8 - 0.01 * (44.5 + 89) / 2 / 32),
    }
    flat = _task()
    flat["runs"]["DDPO (PPO)"][1] = _metrics(0.0, start=0.05)  # at its final reward from the start: ratio 0
    slow = _task()
    slow["runs"]["RLCM (PPO)"][1] = _metrics(0.0001, seconds_per_query=0.02)  # never reaches 0.178: censored
    assert [p["value"] for p in _summarise(flat)["train_speedup_pairs"]] == [pytest.approx(12.8 / 0.89), 0.0]
    censored = _summarise(slow)
    assert censored["train_speedup_censored"] == 1
    assert censored["train_speedup_pairs"][1]["value"] == pytest.approx(12.8 / (160 * 0.02))


def test_a_contended_run_is_flagged(tmp_path):
    contended = _task()
    for m in contended["runs"]["DDPO (PPO)"][1]:
        m["cpu_time_s"] /= 2  # half the CPU per wall-clock second of its twin: something else held a core
    assert _summarise(contended)["contended_runs"] == [
        {"method": "DDPO (PPO)", "seed": 11, "cpu_per_wall": pytest.approx(0.95), "best_of_method": pytest.approx(1.9)}
    ]
    write_report(_results(contended), tmp_path)
    assert "compression DDPO (PPO) seed 11 (0.95 of 1.90)" in (tmp_path / "report.md").read_text()


def test_report_and_figures(tmp_path):
    results = _results(_task(rlcm_rates=(0.004, 0.001)))
    summary = results["tasks"]["compression"]["summary"]
    plot_curves(results, "reward_queries", "reward queries", tmp_path / "fig4.png")
    plot_frontier(results, tmp_path / "frontier.png")
    plot_evaluations(results, tmp_path)
    write_report(results, tmp_path)
    assert (tmp_path / "fig4.png").stat().st_size > 0 and (tmp_path / "fig8_heldout.png").exists()
    assert (tmp_path / "frontier.png").stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    low, high = summary["fidelity_speedup_ci95"]
    assert f"| compression | 0.05 | {summary['fidelity_speedup']:.2f} [{low:.2f}, {high:.2f}] | 2/2 / 2/2 |" in report
    assert "| 0 / 0 / 0 | 5.00 [5.00, 5.00] |" in report  # censored, then the cost per query ratio
    assert "| compression | DDPO (PPO) | 0.050 -> 0.178 (+0.128 [+0.128, +0.128], inf SE) |" in report


def test_report_only_rebuilds_summary_figures_and_report_from_results_json(tmp_path):
    results = _results(_task())
    results["tasks"]["compression"]["summary"] = {"stale": True}
    (tmp_path / "results.json").write_text(json.dumps(results))
    main(Args(output_dir=tmp_path, report_only=True))
    rebuilt = json.loads((tmp_path / "results.json").read_text())
    assert rebuilt["summary"]["compression"] == json.loads(json.dumps(_summarise(_task())))
    assert (tmp_path / "report.md").exists() and (tmp_path / "fig5_reward_vs_wallclock.png").exists()
    assert not (tmp_path / "runs").exists()  # nothing trained


def _tiny_methods(args, task):
    small = dict(
        sample_batch_size=4, batches_per_epoch=1, train_batch_size=2, eval_size=4, finetune="lora", lora_rank=2
    )
    return {
        "RLCM (PPO)": replace_config(PRESETS["tiny-compression"], num_steps=2, **small),
        "DDPO (PPO)": replace_config(PRESETS["tiny-ddpo-compression"], num_steps=3, **small),
        "Flow-GRPO": replace_config(PRESETS["tiny-compression"], env="flow", num_steps=2, **small),
    }


@pytest.mark.slow
def test_an_interrupted_suite_skips_finished_runs_and_resumes_the_interrupted_one(tmp_path, monkeypatch):
    import benchmarks.runs
    import genrl.train

    monkeypatch.setattr(suite, "method_configs", _tiny_methods)
    monkeypatch.setattr(evaluation, "evaluation_steps", lambda cfg, quick=False: [cfg.num_steps])
    args = Args(output_dir=tmp_path, tasks=("compression",), seeds=1, queries=12, eval_queries=4, eval_images=4)
    real_epoch = genrl.train.run_epoch

    def interrupted(t, epoch):  # DDPO is stopped in its third epoch, after the checkpoint of its second
        if t.cfg.run_name == "compression-ddpo-ppo-seed10" and epoch == 3:
            raise KeyboardInterrupt
        return real_epoch(t, epoch)

    monkeypatch.setattr(genrl.train, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    runs = tmp_path / "runs"
    assert (runs / "compression-rlcm-ppo-seed10" / "finished.json").is_file()  # seed 10: the first benchmark seed
    assert not (runs / "compression-ddpo-ppo-seed10" / "finished.json").exists()
    before = [json.loads(line) for line in (runs / "compression-ddpo-ppo-seed10" / "metrics.jsonl").open()]
    assert [m["epoch"] for m in before] == [0, 1, 2]

    monkeypatch.setattr(genrl.train, "run_epoch", real_epoch)
    trained = []
    real_train = benchmarks.runs.train
    monkeypatch.setattr(benchmarks.runs, "train", lambda cfg: trained.append(cfg) or real_train(cfg))
    main(args)
    assert [(c.run_name, c.resume) for c in trained] == [
        ("compression-ddpo-ppo-seed10", runs / "compression-ddpo-ppo-seed10"),
        ("compression-flow-ppo-seed10", None),
    ]  # the finished RLCM run is read, not trained again
    after = json.loads((runs / "compression-ddpo-ppo-seed10" / "finished.json").read_text())["metrics"]
    assert [m["epoch"] for m in after] == [0, 1, 2, 3] and after[:3] == before
    rlcm = json.loads((runs / "compression-rlcm-ppo-seed10" / "finished.json").read_text())["metrics"]
    assert rlcm[-1]["reward_queries"] == 12  # the same budget as DDPO's
    assert (runs / "compression-rlcm-ppo-seed10" / "checkpoints" / "best").is_symlink()  # for the sample grids
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["summary"]["compression"]) >= {"fidelity_speedup", "fidelity_speedup_ci95", "eval_reward"}
    assert set(results["summary"]["compression"]["versus"]) == {
        "Flow-GRPO over DDPO (PPO)",
        "RLCM (PPO) over Flow-GRPO",
    }
    assert results["tasks"]["compression"]["evaluation"]["Flow-GRPO"]["steps"]["2"]["seconds_per_image"] > 0
    timing = results["tasks"]["compression"]["inference_timing"]  # interleaved rounds, DDPO's time over RLCM's
    assert timing["methods"] == ["DDPO (PPO)", "RLCM (PPO)"] and timing["ratio_range"][0] <= timing["ratio"]
    assert results["summary"]["compression"]["inference_speedup"] == timing["ratio"] > 0
    assert results["meta"]["seeds"] == [10] and results["meta"]["sweep_seeds"] == [0, 1]
    assert (tmp_path / "report.md").exists() and (tmp_path / "samples_compression.png").exists()
    for name in ("compression-rlcm-ppo-seed10", "compression-ddpo-ppo-seed10"):  # its last evaluation's picture
        last = json.loads((runs / name / "finished.json").read_text())["metrics"][-1]["epoch"]
        grid = runs / name / "samples" / f"epoch-{last:04d}-eval.png"
        assert (runs / name / "end.png").read_bytes() == grid.read_bytes()
    assert "[end](runs/compression-rlcm-ppo-seed10/end.png)" in (tmp_path / "report.md").read_text()

    main(args)  # everything finished: nothing trains
    assert len(trained) == 2


def test_a_run_keeps_its_grids_where_it_first_met_the_target_and_at_its_end(tmp_path):
    from benchmarks.runs import keep_grids

    samples = tmp_path / "run" / "samples"
    samples.mkdir(parents=True)
    (tmp_path / "kept").mkdir()
    for epoch in range(6):
        (samples / f"epoch-{epoch:04d}-eval.png").write_bytes(f"grid {epoch}".encode())
    # +0.128 an evaluation (target: +0.05) with the picture kept: met at epoch 1; the accuracy falling to 0.5 by epoch
    # 1 (under 80% of the start's 0.8) puts it off to the first evaluation that keeps it, which is none.
    learns, wrecks, flat = _metrics(0.004), _metrics(0.004, accuracy_drop=0.3), _metrics(0.0)
    for metrics, target in ((learns, b"grid 1"), (wrecks, None), (flat, None)):
        kept = keep_grids(tmp_path / "run", metrics, "compression", into=tmp_path / "kept")
        assert (tmp_path / "kept" / "end.png").read_bytes() == b"grid 5"
        assert [p.name for p in kept] == (["end.png", "target.png"] if target else ["end.png"])
        if target:
            assert (tmp_path / "kept" / "target.png").read_bytes() == target
        for path in kept:
            path.unlink()
    assert keep_grids(tmp_path / "run", _metrics(0.004, evaluations=1), "compression") == []  # a reference


def test_the_composite_run_keeps_its_checkpoint_at_the_target_and_only_the_named_ones(tmp_path):
    from benchmarks.runs import keep_target_checkpoint
    from genrl.checkpoint import point_link

    checkpoints = tmp_path / "run" / "checkpoints"
    for epoch in range(6):
        (checkpoints / f"epoch-{epoch:04d}").mkdir(parents=True)
    point_link(checkpoints / "epoch-0005", "latest")
    point_link(checkpoints / "epoch-0003", "best")
    keep_target_checkpoint(tmp_path / "run", _metrics(0.004), "compression")  # met at epoch 1
    assert (checkpoints / "target").resolve().name == "epoch-0001"
    assert sorted(p.name for p in checkpoints.glob("epoch-*")) == ["epoch-0001", "epoch-0003", "epoch-0005"]
    (checkpoints / "target").unlink()
    keep_target_checkpoint(tmp_path / "run", _metrics(0.0), "compression")  # never met: no link, nothing else kept
    assert not (checkpoints / "target").exists()
    assert sorted(p.name for p in checkpoints.glob("epoch-*")) == ["epoch-0003", "epoch-0005"]


def test_the_untrained_model_of_a_method_with_a_kl_is_evaluated():
    """A KL needs an adapter to switch off; the untrained model has none and trains nothing (the flow alignment
    preset's KL stopped the suite's evaluation once)."""
    cfg = replace_config(_tiny_methods(None, "alignment")["RLCM (PPO)"], kl_coef=0.04)
    reward, seconds, images = evaluation.Evaluator(cfg, None, "cpu", 2).sample(cfg.num_steps, ["a cat"])
    assert math.isfinite(reward) and seconds > 0 and images.shape[0] == 2


def test_a_run_directory_with_other_settings_is_not_taken_over(tmp_path):
    from benchmarks.runs import budgeted, run_directory, run_to_completion
    from genrl.errors import GenrlError

    cfg = _tiny_methods(None, "compression")["RLCM (PPO)"]
    run_dir = run_directory(tmp_path, "compression", "rlcm-ppo", 10)
    metrics = run_to_completion(budgeted(cfg, 4, 4, 10, run_dir, "cpu"))
    assert run_to_completion(budgeted(cfg, 4, 4, 10, run_dir, "cpu")) == metrics  # the same settings: read back
    finished = (run_dir / "finished.json").read_bytes()
    with pytest.raises(GenrlError, match="holds a run with other settings"):  # another budget
        run_to_completion(budgeted(cfg, 8, 4, 10, run_dir, "cpu"))
    assert (run_dir / "finished.json").read_bytes() == finished


def _cli_errors(*args: str, real_process: bool = False) -> list[str]:
    """``python -m benchmarks.run ARGS``, which must fail with exit code 2: its stderr lines. ``real_process``: run
    as a command (once, for the exit status and the lines a real process prints), else ``cli()`` in this process."""
    if real_process:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.run", *args], capture_output=True, text=True, env=env)
        assert proc.returncode == 2, proc.stderr
        return proc.stderr.strip().splitlines()
    with pytest.MonkeyPatch.context() as patch, _capture_stderr() as err:
        patch.setattr(sys, "argv", ["benchmarks.run", *args])
        with pytest.raises(SystemExit) as exit_:
            suite.cli()
    assert exit_.value.code == 2, err.getvalue()
    return err.getvalue().strip().splitlines()


def _capture_stderr():
    import contextlib
    import io

    return contextlib.redirect_stderr(io.StringIO())


def test_the_paper_suite_says_what_it_needs(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    lines = _cli_errors("--suite", "paper", "--output-dir", str(tmp_path / "out"))
    assert len(lines) == 1 and lines[0].startswith("error: the paper suite cannot run here")
    assert "SimianLuo/LCM_Dreamshaper_v7" in lines[0] and "GPU" in lines[0]
    assert "stabilityai/stable-diffusion-3.5-medium" in lines[0]  # the contender's model
    lines = _cli_errors("--suite", "paper", "--no-contenders", "--output-dir", str(tmp_path / "out"))
    assert "SimianLuo/LCM_Dreamshaper_v7" in lines[0] and "stable-diffusion-3.5" not in lines[0]
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_shapes_model_still_to_be_built_ends_the_suite_before_any_run(tmp_path, monkeypatch):
    import genrl.models

    monkeypatch.setattr(genrl.models, "shipped_dir", lambda: tmp_path / "not-built")
    lines = _cli_errors("--output-dir", str(tmp_path / "out"))
    assert len(lines) == 1 and "python -m genrl.shapes.pretrain" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_budget_that_is_not_whole_epochs_is_a_one_line_error(tmp_path):
    lines = _cli_errors("--queries", "100", "--output-dir", str(tmp_path))
    assert len(lines) == 1 and "must be whole epochs" in lines[0] and "multiples of 32" in lines[0]


def test_report_only_without_results_is_a_one_line_error(tmp_path):
    assert _cli_errors("--report-only", "--output-dir", str(tmp_path / "none")) == [
        f"error: --report-only needs {tmp_path / 'none' / 'results.json'}: pass the --output-dir of a finished "
        "benchmark run"
    ]


@pytest.mark.slow
def test_report_only_on_a_broken_results_file_is_a_one_line_error_that_keeps_it(tmp_path):
    (tmp_path / "results.json").write_text('{"tasks": ')
    lines = _cli_errors("--report-only", "--output-dir", str(tmp_path), real_process=True)
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'results.json'} is not valid JSON")
    assert (tmp_path / "results.json").read_text() == '{"tasks": '


def test_the_sweep_picks_by_the_benchmarks_target():
    from benchmarks.sweep import pick_winner, score

    # Each setting's two seeds: the rate its reward rises a query and how fast its prompt accuracy falls.
    hacks = score([_metrics(0.01, accuracy_drop=0.2)] * 2, "compression")  # gains 0.32 by 32 queries, wrecked
    fast = score([_metrics(0.004), _metrics(0.001)], "compression")  # the target at 32 and 64 queries
    slow = score([_metrics(0.001), _metrics(0.001)], "compression")  # at 64 and 64
    once = score([_metrics(0.01), _metrics(0.0)], "compression")  # at 32 on one seed, censored (160) on the other
    assert (hacks["reached"], fast["reached"], once["reached"]) == (0, 2, 1)
    assert (fast["queries_to_target"], once["queries_to_target"]) == (48, 96)
    assert hacks["gain_final"] == pytest.approx(0.01 * 128) and hacks["accuracy_final"] == pytest.approx(0.8 - 0.8)
    named = [("hacks", hacks), ("slow", slow), ("fast", fast), ("once", once)]
    rows = [{"setting": name, **row} for name, row in named]
    assert pick_winner(rows)["setting"] == "fast"
    assert pick_winner([rows[0], rows[3]])["setting"] == "once"  # more seeds reach it, whatever the gain


# --------------------------------------------------------------------------------------------------
# Bad input: one ``error:`` line naming the problem and the fix, before anything is trained or written
# --------------------------------------------------------------------------------------------------
def _set(path: tuple, value):
    """A mutation of a results dict: the value at ``path`` replaced (or, for ``_DELETE``, removed)."""

    def mutate(results: dict):
        *parents, last = path
        for key in parents:
            results = results[key]
        if value is _DELETE:
            del results[last]
        else:
            results[last] = value

    return mutate


_DELETE = object()
_RUNS = ("tasks", "compression", "runs")
_EVAL = ("tasks", "compression", "evaluation")
_MALFORMED = {  # case -> (the file's content: a whole JSON value or a mutation of a good file; what the error says)
    "a list": ([], "the top level should be an object, not a list"),
    "a number": (3, "the top level should be an object, not the number 3"),
    "an empty object": ({}, 'the top level has no "tasks"'),
    "no tasks": (_set(("tasks",), {}), '["tasks"] names no task'),
    "runs missing": (_set(_RUNS, _DELETE), '["tasks"]["compression"] has no "runs"'),
    "a method missing": (_set((*_RUNS, "RLCM (PPO)"), _DELETE), '["runs"] has no "RLCM (PPO)"'),
    "an unknown method": (
        _set((*_RUNS, "RLCM (SGD)"), []),
        '["runs"] names the method "RLCM (SGD)", not one of RLCM (PPO), DDPO (PPO), Flow-GRPO, RLCM (DPG)',
    ),
    "a string for a method's seeds": (
        _set((*_RUNS, "DDPO (PPO)"), "seed 0"),
        '["runs"]["DDPO (PPO)"] should be a list, not the string "seed 0"',
    ),
    "no seeds": (_set((*_RUNS, "DDPO (PPO)"), []), '["runs"]["DDPO (PPO)"] holds no run'),
    "a string for a run's metrics": (
        _set((*_RUNS, "RLCM (PPO)", 1), "metrics.jsonl"),
        '["RLCM (PPO)"][1] should be a list, not the string "metrics.jsonl"',
    ),
    "metrics records that are not objects": (
        _set((*_RUNS, "RLCM (PPO)", 0), [1, 2]),
        '["RLCM (PPO)"][0][0] should be an object, not the number 1',
    ),
    "an empty run": (_set((*_RUNS, "DDPO (PPO)", 0), []), '["DDPO (PPO)"][0] has 0 evaluations'),
    "a missing key in a record": (
        _set((*_RUNS, "DDPO (PPO)", 0, 2, "wall_time_s"), _DELETE),
        '["DDPO (PPO)"][0][2] has no "wall_time_s"',
    ),
    "a non-numeric value": (
        _set((*_RUNS, "RLCM (PPO)", 1, 3, "eval_reward_mean"), "0.5"),
        '["RLCM (PPO)"][1][3]["eval_reward_mean"] should be a number, not the string "0.5"',
    ),
    "a NaN evaluation reward": (  # json.loads reads NaN; the ratios would then fail on it with a traceback
        _set((*_RUNS, "RLCM (PPO)", 1, 3, "eval_reward_mean"), float("nan")),
        '["RLCM (PPO)"][1][3]["eval_reward_mean"] should be a number, not NaN',
    ),
    "an infinite reward at a step count": (
        _set((*_EVAL, "DDPO (PPO)", "steps", "50", "reward"), float("-inf")),
        '["DDPO (PPO)"]["steps"]["50"]["reward"] should be a number, not -Infinity',
    ),
    "infinite seconds per image": (
        _set((*_EVAL, "RLCM (PPO)", "steps", "4", "seconds_per_image"), float("inf")),
        '["seconds_per_image"] should be a positive number, not Infinity',
    ),
    "null for a number": (
        _set((*_RUNS, "DDPO (PPO)", 1, 0, "eval_reward_std"), None),
        '["DDPO (PPO)"][1][0]["eval_reward_std"] should be a number, not null',
    ),
    "true for a number": (
        _set((*_RUNS, "DDPO (PPO)", 1, 4, "reward_queries"), True),
        '["reward_queries"] should be a number, not true',
    ),
    "an evaluation without its std": (
        _set((*_RUNS, "DDPO (PPO)", 0, 0, "eval_reward_std"), _DELETE),
        '["DDPO (PPO)"][0][0] has "eval_reward_mean" but no "eval_reward_std"',
    ),
    "configs missing": (_set(("tasks", "compression", "configs"), _DELETE), '["compression"] has no "configs"'),
    "a config without eval_size": (
        _set(("tasks", "compression", "configs", "DDPO (PPO)", "eval_size"), _DELETE),
        '["configs"]["DDPO (PPO)"] has no "eval_size"',
    ),
    "an evaluation without the training horizon": (
        _set((*_EVAL, "RLCM (PPO)", "steps", "4"), _DELETE),
        '["evaluation"]["RLCM (PPO)"]["steps"] has no "4"',
    ),
    "a step count that is not a number": (
        _set((*_EVAL, "DDPO (PPO)", "steps", "many"), {"reward": 1.0, "seconds_per_image": 1.0}),
        '["DDPO (PPO)"]["steps"] has the key "many", not a number of steps',
    ),
    "zero seconds per image": (
        _set((*_EVAL, "RLCM (PPO)", "steps", "4", "seconds_per_image"), 0),
        '["seconds_per_image"] should be a positive number, not the number 0',
    ),
    "meta missing": (_set(("meta",), _DELETE), 'the top level has no "meta"'),
    "meta without a task's eval_queries": (
        _set(("meta", "eval_queries"), {}),
        '["meta"]["eval_queries"] has no "compression"',
    ),
    "a count of seeds rather than the seeds": (
        _set(("meta", "seeds"), 2),
        '["meta"]["seeds"] should be a list, not the number 2',
    ),
    "fewer seeds than runs": (
        _set(("meta", "seeds"), [10]),
        '["tasks"]["compression"]["runs"]["RLCM (PPO)"] holds 2 runs, but ["meta"]["seeds"] names 1',
    ),
    "meta without the sweep's seeds": (_set(("meta", "sweep_seeds"), _DELETE), '["meta"] has no "sweep_seeds"'),
}


@pytest.mark.parametrize("case", list(_MALFORMED))
def test_report_only_on_a_malformed_results_file_names_where_and_the_fix_and_keeps_it(tmp_path, case):
    from genrl.errors import GenrlError

    content, says = _MALFORMED[case]
    if callable(content):
        results = json.loads(json.dumps(_results(_task())))
        content(results)
        content = results
    path = tmp_path / "results.json"
    path.write_text(json.dumps(content))
    with pytest.raises(GenrlError) as error:
        main(Args(output_dir=tmp_path, report_only=True))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path} does not hold a benchmark's results: ")
    assert says in message and "restore it, or delete it and rerun the benchmark" in message
    assert path.read_text() == json.dumps(content)  # kept as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no report or figure from it


def test_the_committed_results_pass_the_check():
    from pathlib import Path

    from benchmarks.results_check import check_results

    path = Path(__file__).parents[2] / "docs" / "benchmark" / "results.json"
    if not path.exists():
        pytest.skip("no results committed yet: the protocol's full run writes them task by task")
    check_results(json.loads(path.read_text()))


def test_a_malformed_results_file_is_one_line_on_the_command_line(tmp_path):
    (tmp_path / "results.json").write_text('{"tasks": {"compression": {"runs": []}}}')
    lines = _cli_errors("--report-only", "--output-dir", str(tmp_path))
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'results.json'} does not hold")
    assert '["tasks"]["compression"]["runs"] should be an object, not a list' in lines[0]


def _no_work(*args, **kwargs):
    raise AssertionError("the command started work on bad input")


def _cli_in_process(cli, argv: list[str], monkeypatch, capsys) -> str:
    """``cli`` on ``argv``, which must end in exit status 2 before any work: its one line on stderr."""
    monkeypatch.setattr(sys, "argv", ["benchmarks", *argv])
    with pytest.raises(SystemExit) as exit_:
        cli()
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def _count(flag: str, value: str) -> str:
    return f"error: {flag} must be at least 1, got {value}: pass a positive number, or leave it out for the default"


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--seeds", "0"], _count("--seeds", "0")),
        (["--seeds", "-1"], _count("--seeds", "-1")),
        (["--queries", "0"], _count("--queries", "0")),
        (["--eval-queries", "0"], _count("--eval-queries", "0")),
        (["--eval-images", "0"], _count("--eval-images", "0")),
        (["--eval-images", "-8", "--quick"], _count("--eval-images", "-8")),
        (["--seeds", "0", "--report-only"], _count("--seeds", "0")),
        (["--eval-images", "12"], "error: --eval-images must be at most 8 or a multiple of 8, got 12: pass 8 or 16"),
        (["--tasks"], "error: --tasks names no task: list at least one, or leave it out for the default"),
        (["--tasks", "compression", "compression"], "error: --tasks names compression twice: list each task once"),
    ],
)
def test_a_bad_flag_of_the_suite_is_a_one_line_error_before_any_work(tmp_path, monkeypatch, capsys, flags, line):
    for name in ("run_to_completion", "untrained_evaluation", "evaluate_task", "write_outputs"):
        monkeypatch.setattr(suite, name, _no_work)
    out = tmp_path / "out"
    assert _cli_in_process(suite.cli, [*flags, "--output-dir", str(out)], monkeypatch, capsys) == line
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--families"], "error: --families names no family: list at least one, or leave it out for the default"),
        (["--families", "jpeg", "jpeg"], "error: --families names jpeg twice: list each family once"),
    ],
)
def test_a_bad_flag_of_the_sweep_is_a_one_line_error_before_any_work(tmp_path, monkeypatch, capsys, flags, line):
    import benchmarks.sweep as sweep

    monkeypatch.setattr(sweep, "run_to_completion", _no_work)
    out = tmp_path / "out"
    assert _cli_in_process(sweep.cli, [*flags, "--output-dir", str(out)], monkeypatch, capsys) == line
    assert not out.exists()


@pytest.mark.parametrize(
    "content",
    ["{", "[]", '{"metrics": [{"reward_queries": 0}]}', "\udcff"],
    ids=["not JSON", "a list", "a record without wall_time_s", "not UTF-8"],
)
def test_a_broken_finished_run_is_a_one_line_error_that_keeps_it(tmp_path, content):
    from benchmarks.runs import run_to_completion
    from genrl.errors import GenrlError

    cfg = dataclasses.replace(PRESETS["tiny-compression"], output_dir=tmp_path, run_name="run")
    finished = tmp_path / "run" / "finished.json"
    finished.parent.mkdir()
    raw = content.encode("utf-8", "surrogateescape")  # the last: a byte that is not UTF-8
    finished.write_bytes(raw)
    with pytest.raises(GenrlError) as error:
        run_to_completion(cfg)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{finished} ")
    assert f"delete {tmp_path / 'run'}" in message
    assert finished.read_bytes() == raw


def test_two_sweep_processes_share_the_runs_and_the_table_waits_for_both(tmp_path, monkeypatch, capsys):
    import benchmarks.sweep as sweep
    from genrl.rundir import RunDirInUse

    order = []

    def fake_run(cfg):
        order.append(cfg.run_name)
        if cfg.run_name.startswith("alignment-rlcm-ppo-learning_rate0.0003"):
            raise RunDirInUse("held by the other process")
        return _metrics(0.004)

    monkeypatch.setattr(sweep, "run_to_completion", fake_run)
    sweep.main(sweep.Args(output_dir=tmp_path, families=("alignment",), from_end=True))
    # From the end: Flow-GRPO's SDE window on seed 1, its window named without brackets or spaces.
    assert order[0] == "alignment-flow-ppo-learning_rate0.001_sde_window0-5-seed1"
    assert order[-1].endswith("0.0003-seed0")
    assert "2 runs are being trained by another process" in capsys.readouterr().out
    assert not (tmp_path / "sweep.md").exists()  # the table waits for every run
    monkeypatch.setattr(sweep, "run_to_completion", lambda cfg: _metrics(0.004))
    sweep.main(sweep.Args(output_dir=tmp_path, families=("alignment",)))
    table = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["settings"] for r in table["alignment"]["RLCM (PPO)"]["rows"]] == [
        {"learning_rate": lr} for lr in (3e-4, 1e-3, 3e-3)
    ]


def test_a_retrain_says_whether_it_reproduced_the_committed_run_and_where_each_met_the_target():
    from benchmarks.retrain_grids import comparison

    committed = _metrics(0.004)  # meets the target at epoch 1
    same = [dict(m, wall_time_s=m["wall_time_s"] + 1.0) for m in committed]  # other clocks only
    assert comparison(committed, same, "compression") == {
        "reproduced": True,
        "max_eval_reward_difference": 0.0,
        "committed_target_epoch": 1,
        "target_epoch": 1,
        "end_epoch": 5,
    }
    slower = _metrics(0.001)  # +0.032 an evaluation: meets the target at epoch 2
    found = comparison(committed, slower, "compression")
    assert not found["reproduced"] and found["target_epoch"] == 2
    assert math.isclose(found["max_eval_reward_difference"], 5 * 32 * 0.003)
    assert comparison(committed, _metrics(0.0), "compression")["target_epoch"] is None  # never met: censored
