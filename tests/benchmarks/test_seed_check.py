"""benchmarks/seed_check.py: the best evaluation that keeps the picture, the last one, and a t-interval."""

import json

import pytest
from scipy import stats

from benchmarks.seed_check import summary, t_interval


def _run(folder, curve):
    folder.mkdir()
    lines = [{"epoch": e, "eval_reward_mean": r, "eval_prompt_accuracy": a} for e, r, a in curve]
    lines.insert(1, {"epoch": 1, "reward_mean": 9.0})  # a training record: not an evaluation
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_the_kept_gain_is_the_best_evaluation_above_the_floor_and_the_end_is_the_last(tmp_path):
    run = _run(tmp_path / "r", [(0, 1.0, 0.5), (4, 1.2, 0.45), (8, 1.5, 0.3), (12, 1.1, 0.6)])
    row = summary(run, 0.8)
    assert (row["kept_epoch"], row["kept_gain"]) == (4, pytest.approx(0.2))  # epoch 8 lost the picture (60%)
    assert (row["end_epoch"], row["end_gain"], row["end_accuracy"]) == (12, pytest.approx(0.1), pytest.approx(1.2))
    wrecked = summary(_run(tmp_path / "w", [(0, 1.0, 0.5), (4, 1.3, 0.1)]), 0.8)
    assert (wrecked["kept_epoch"], wrecked["kept_gain"]) == (0, 0.0)  # the start counts


def test_the_interval_is_students_t():
    values = [0.1, 0.2, 0.4]
    mean, low, high = t_interval(values)
    expected = stats.t.interval(0.95, 2, loc=sum(values) / 3, scale=stats.sem(values))
    assert (low, high) == pytest.approx(expected) and mean == pytest.approx(0.7 / 3)
