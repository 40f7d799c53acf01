"""The headline ratios on synthetic evaluation curves, against hand-computed answers."""

import numpy as np
import pytest

from benchmarks.ratios import bootstrap_ci, final_reward, first_reach, pair_ratio, summarise_pairs


def _line(rate: float, points: int = 11, step: float = 10.0, start: float = 0.0, ceiling: float = 1.0):
    """Evaluations every ``step`` seconds of a reward rising at ``rate`` per second from ``start`` to ``ceiling``."""
    x = [i * step for i in range(points)]
    return x, [min(ceiling, start + rate * t) for t in x]


def test_first_reach_interpolates_between_evaluations():
    assert first_reach([0, 10, 20], [0.0, 0.4, 0.8], 0.6) == pytest.approx(15.0)
    assert first_reach([0, 10, 20], [0.0, 0.4, 0.8], 0.4) == pytest.approx(10.0)
    assert first_reach([0, 10, 20], [0.5, 0.4, 0.8], 0.45) == 0.0  # reached at the start
    assert first_reach([0, 10, 20], [0.0, 0.9, 0.1], 0.45) == pytest.approx(5.0)  # the first crossing counts
    assert first_reach([0, 10, 20], [0.0, 0.4, 0.8], 0.81) is None  # never


def test_the_target_is_the_mean_of_the_last_three_evaluations():
    assert final_reward([0.0, 5.0, 1.0, 2.0, 6.0]) == pytest.approx(3.0)
    assert final_reward([2.0, 4.0]) == pytest.approx(3.0)


def test_the_ratio_of_times_to_the_slow_methods_final_reward():
    slow = _line(0.005)  # 0 -> 0.5 over 100 s: final reward mean(0.4, 0.45, 0.5) = 0.45, reached at 90 s
    fast = _line(0.05)  # the same 10x faster: 0.45 at 9 s
    ratio = pair_ratio(slow, fast, "DDPO", "RLCM")
    assert ratio.target == pytest.approx(0.45)
    assert (ratio.slow_x, ratio.fast_x) == (pytest.approx(90.0), pytest.approx(9.0))
    assert ratio.value == pytest.approx(10.0) and not ratio.lower_bound and ratio.why_none is None


def test_a_fast_method_that_never_gets_there_has_no_ratio_and_says_why():
    ratio = pair_ratio(_line(0.005), _line(0.001), "DDPO", "RLCM")
    assert ratio.value is None and ratio.why_none == "RLCM never reaches DDPO's reward"


def test_a_slow_method_that_gains_nothing_has_no_ratio():
    flat = _line(0.0, start=0.2)
    declining = ([0, 10, 20, 30], [0.5, 0.4, 0.3, 0.2])
    for slow in (flat, declining):
        ratio = pair_ratio(slow, _line(0.05), "DDPO", "RLCM")
        assert ratio.value is None and ratio.why_none == "DDPO gains nothing over its start"
        assert ratio.left_out  # RLCM got there: an unbounded ratio, left out of the mean
    # Neither gets anywhere: RLCM never reaches even a declining DDPO's end, which is a measured failure.
    ratio = pair_ratio(declining, _line(0.0, start=0.1), "DDPO", "RLCM")
    assert ratio.why_none == "RLCM never reaches DDPO's reward" and not ratio.left_out


def test_a_fast_method_past_the_target_at_its_start_gives_a_lower_bound():
    slow = _line(0.005)  # target 0.45, reached at 90 s
    fast = ([0, 4, 8], [0.6, 0.7, 0.8])  # already above 0.45 untrained; its first evaluation after updates: 4 s
    ratio = pair_ratio(slow, fast, "DDPO", "RLCM")
    assert ratio.lower_bound and ratio.value == pytest.approx(90.0 / 4.0)


def test_bootstrap_interval_of_the_mean():
    low, high = bootstrap_ci([2.0, 2.0, 2.0])
    assert low == high == 2.0
    values = [1.0, 2.0, 3.0, 10.0]
    low, high = bootstrap_ci(values)
    assert 1.0 <= low < np.mean(values) < high <= 10.0
    # The bootstrap means of 4 values lie on a grid of quarters between the smallest and the largest.
    assert (low * 4) == pytest.approx(round(low * 4)) and (high * 4) == pytest.approx(round(high * 4))


def test_summary_over_seed_pairs():
    pairs = [pair_ratio(_line(0.005), _line(rate), "DDPO", "RLCM") for rate in (0.05, 0.025, 0.0125)]
    summary = summarise_pairs(pairs)
    assert summary["value"] == pytest.approx(np.mean([10.0, 5.0, 2.5]))
    assert summary["ci95"][0] < summary["value"] < summary["ci95"][1] and not summary["lower_bound"]
    assert summary["left_out"] == 0
    flat_ddpo = pair_ratio(_line(0.0, start=0.2), _line(0.05), "DDPO", "RLCM")
    with_flat = summarise_pairs([*pairs, flat_ddpo])
    assert with_flat["value"] == pytest.approx(summary["value"]) and with_flat["ci95"] == summary["ci95"]
    assert with_flat["left_out"] == 1 and len(with_flat["pairs"]) == 4
    only_flat = summarise_pairs([flat_ddpo])
    assert only_flat["value"] is None and only_flat["why_none"] == "DDPO gains nothing over its start"
    pairs.append(pair_ratio(_line(0.005), _line(0.001), "DDPO", "RLCM"))
    missing = summarise_pairs(pairs)
    assert missing["value"] is None and missing["ci95"] is None
    assert missing["why_none"] == "RLCM never reaches DDPO's reward" and len(missing["pairs"]) == 4
