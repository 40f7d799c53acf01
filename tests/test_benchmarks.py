"""The benchmark suite's arithmetic (smoothing, time-to-reward, the headline ratios) and its report."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.run import (
    Args,
    final_reward,
    initial_reward,
    main,
    plot_curves,
    plot_evaluations,
    smooth,
    speedup,
    summarise,
    write_report,
)


def _run(rate: float, epochs: int = 60, start: float = 0.0, ceiling: float = 1.0, queries_per_epoch: int = 16):
    """Reward rising linearly at ``rate`` per second to ``ceiling``; one epoch per second."""
    return [
        {
            "epoch": e,
            "wall_time_s": float(e),
            "reward_queries": e * queries_per_epoch,
            "reward_mean": min(ceiling, start + rate * e),
        }
        for e in range(1, epochs + 1)
    ]


def test_smooth_is_a_trailing_moving_average():
    values = [1.0, 5.0, 2.0, 8.0, 3.0]
    expected = [np.mean(values[max(0, i - 2) : i + 1]) for i in range(len(values))]
    np.testing.assert_allclose(smooth(values, 3), expected)


def test_speedup_is_the_ratio_of_times_to_ninety_percent_of_the_slow_gain():
    slow, fast = [_run(0.02)], [_run(0.2)]  # slow ends at 1.0 (epoch 50), fast gets there 10x sooner
    # Target 0.9; the fast curve's smoothed reward first passes it at epoch 6.
    target = 0.9 * final_reward(slow)
    slow_time = next(
        m["wall_time_s"] for m, s in zip(slow[0], smooth([m["reward_mean"] for m in slow[0]])) if s >= target
    )
    ratio = speedup(slow, fast, "wall_time_s", start=0.0)
    assert ratio == pytest.approx(slow_time / 6.0, rel=0.05)
    assert 7 < ratio < 9
    assert speedup(slow, [_run(0.001)], "wall_time_s", 0.0) is None  # never reaches the target
    assert speedup([_run(0.0, start=-1)], fast, "wall_time_s", 0.0) is None  # the slow method gains nothing


def _cli_errors(*args: str, env: dict | None = None) -> list[str]:
    """Runs ``python -m benchmarks.run ARGS``, which must fail with exit code 2; its stderr lines."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    return proc.stderr.strip().splitlines()


def _task(ddpo_rate: float = 0.02) -> dict:
    steps = lambda t: {str(h): {"reward": 0.1 * h, "seconds_per_image": t * h} for h in (2, 4, 8)}
    return {
        "curves": {"RLCM (PPO)": [_run(0.2), _run(0.1)], "DDPO (PPO)": [_run(ddpo_rate), _run(ddpo_rate * 1.5)]},
        "configs": {"RLCM (PPO)": {"num_steps": 4}, "DDPO (PPO)": {"num_steps": 8}},
        "evaluation": {
            "RLCM (PPO)": {"steps": steps(0.01), "trained_reward": 0.4, "heldout_reward": 0.3},
            "DDPO (PPO)": {"steps": steps(0.1), "trained_reward": 0.8, "heldout_reward": 0.5},
        },
    }


def _results(task: dict) -> dict:
    meta = dict(suite="shapes", command="x", machine="m", seeds=2, time_budget_s=60, eval_images=8, date="d")
    return {"tasks": {"alignment": {**task, "summary": summarise(task)}}, "meta": {**meta, "total_s": 60}}


def test_start_and_end_rewards_average_three_epochs_per_seed():
    runs = [_run(0.1), _run(0.2)]
    assert initial_reward(runs) == pytest.approx(np.mean([0.1, 0.2, 0.3, 0.2, 0.4, 0.6]))
    assert final_reward(runs) == pytest.approx(1.0)
    summary = summarise(_task())
    ddpo_start = initial_reward(_task()["curves"]["DDPO (PPO)"])
    assert summary["starting_reward"] == pytest.approx((initial_reward(runs) + ddpo_start) / 2)


def test_summary_and_report(tmp_path):
    results = _results(_task())
    summary = results["tasks"]["alignment"]["summary"]
    assert summary["inference_speedup"] == pytest.approx((0.1 * 8) / (0.01 * 4))
    assert summary["train_speedup"] > 1 and summary["query_efficiency"] == pytest.approx(summary["train_speedup"])
    assert summary["final_reward"]["DDPO (PPO)"] == pytest.approx(1.0)
    plot_curves(results, "reward_queries", "reward queries", tmp_path / "fig4.png")
    plot_evaluations(results, tmp_path)
    write_report(results, tmp_path)
    assert (tmp_path / "fig4.png").stat().st_size > 0 and (tmp_path / "fig8_heldout.png").exists()
    report = (tmp_path / "report.md").read_text()
    start = summary["initial_reward"]["RLCM (PPO)"]
    assert f"| alignment | {summary['train_speedup']:.2f} |" in report
    assert f"| {start:.3f} -> 1.000 |" in report


def test_report_says_why_a_ratio_is_missing(tmp_path):
    write_report(_results(_task(ddpo_rate=0.0)), tmp_path)  # DDPO flat at 0: it gains nothing
    assert "| alignment | n/a (DDPO gains nothing) |" in (tmp_path / "report.md").read_text()
    task = _task()
    task["curves"]["RLCM (PPO)"] = [_run(0.001), _run(0.001)]  # RLCM crawls and never reaches DDPO's reward
    write_report(_results(task), tmp_path)
    assert "| alignment | n/a (RLCM never gets there) |" in (tmp_path / "report.md").read_text()


def test_report_only_rebuilds_summary_figures_and_report_from_results_json(tmp_path):
    results = _results(_task())
    results["tasks"]["alignment"]["summary"] = {"stale": True}
    (tmp_path / "results.json").write_text(json.dumps(results))
    main(Args(output_dir=tmp_path, report_only=True))
    rebuilt = json.loads((tmp_path / "results.json").read_text())
    assert rebuilt["summary"]["alignment"] == json.loads(json.dumps(summarise(_task())))
    assert (tmp_path / "report.md").exists() and (tmp_path / "fig5_reward_vs_wallclock.png").exists()
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_the_paper_suite_says_what_it_needs(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    lines = _cli_errors("--suite", "paper", "--output-dir", str(tmp_path / "out"), env=env)
    assert len(lines) == 1 and lines[0].startswith("error: the paper suite cannot run here")
    assert "SimianLuo/LCM_Dreamshaper_v7" in lines[0] and "GPU" in lines[0]
    assert not (tmp_path / "out" / "results.json").exists()


def test_report_only_without_results_is_a_one_line_error(tmp_path):
    assert _cli_errors("--report-only", "--output-dir", str(tmp_path / "none")) == [
        f"error: --report-only needs {tmp_path / 'none' / 'results.json'}: pass the --output-dir of a finished "
        "benchmark run"
    ]


def test_report_only_on_a_broken_results_file_is_a_one_line_error_that_keeps_it(tmp_path):
    (tmp_path / "results.json").write_text('{"tasks": ')
    lines = _cli_errors("--report-only", "--output-dir", str(tmp_path))
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'results.json'} is not valid JSON")
    assert (tmp_path / "results.json").read_text() == '{"tasks": '
