"""The benchmark suite's arithmetic (smoothing, time-to-reward, the headline ratios) and its report."""

import numpy as np
import pytest

from benchmarks.run import final_reward, plot_curves, plot_evaluations, smooth, speedup, summarise, write_report


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


def test_summary_and_report(tmp_path):
    steps = lambda t: {str(h): {"reward": 0.1 * h, "seconds_per_image": t * h} for h in (2, 4, 8)}  # noqa: E731
    task = {
        "curves": {"RLCM (PPO)": [_run(0.2), _run(0.1)], "DDPO (PPO)": [_run(0.02), _run(0.03)]},
        "configs": {"RLCM (PPO)": {"num_steps": 4}, "DDPO (PPO)": {"num_steps": 8}},
        "evaluation": {
            "RLCM (PPO)": {"steps": steps(0.01), "trained_reward": 0.4, "heldout_reward": 0.3},
            "DDPO (PPO)": {"steps": steps(0.1), "trained_reward": 0.8, "heldout_reward": 0.5},
        },
    }
    summary = summarise(task)
    assert summary["inference_speedup"] == pytest.approx((0.1 * 8) / (0.01 * 4))
    assert summary["train_speedup"] > 1 and summary["query_efficiency"] == pytest.approx(summary["train_speedup"])
    assert summary["final_reward"]["DDPO (PPO)"] == pytest.approx(1.0)
    results = {
        "tasks": {"alignment": {**task, "summary": summary}},
        "meta": {
            "suite": "shapes",
            "command": "x",
            "machine": "m",
            "seeds": 2,
            "time_budget_s": 60,
            "eval_images": 8,
            "date": "d",
            "total_s": 60,
        },
    }
    plot_curves(results, "reward_queries", "reward queries", tmp_path / "fig4.png")
    plot_evaluations(results, tmp_path)
    write_report(results, tmp_path)
    assert (tmp_path / "fig4.png").stat().st_size > 0 and (tmp_path / "fig8_heldout.png").exists()
    assert f"| alignment | {summary['train_speedup']:.2f} |" in (tmp_path / "report.md").read_text()


def test_the_paper_suite_says_what_it_needs(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--suite", "paper", "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the paper suite cannot run here")
    assert "SimianLuo/LCM_Dreamshaper_v7" in lines[0] and "GPU" in lines[0]
    assert not (tmp_path / "out" / "results.json").exists()
