"""The paper's ratio on synthetic evaluation curves, against hand-computed answers."""

import numpy as np
import pytest
from scipy import stats

from benchmarks.ratios import final_reward, first_reach, pair_ratio, summarise_pairs


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
    ratio = pair_ratio(slow, fast)
    assert ratio.target == pytest.approx(0.45)
    assert (ratio.slow_x, ratio.fast_x) == (pytest.approx(90.0), pytest.approx(9.0))
    assert ratio.value == pytest.approx(10.0) and ratio.bound is None


def test_a_fast_method_that_never_gets_there_is_censored_at_its_budget():
    ratio = pair_ratio(_line(0.005), _line(0.001))  # reaches 0.1 of the 0.45 by its last evaluation at 100 s
    assert ratio.censored and ratio.bound == "upper" and ratio.value == pytest.approx(90.0 / 100.0)


def test_a_slow_method_that_gains_nothing_is_at_its_final_reward_from_the_start():
    flat = _line(0.0, start=0.2)
    declining = ([0, 10, 20, 30], [0.5, 0.4, 0.3, 0.2])
    for slow in (flat, declining):
        ratio = pair_ratio(slow, _line(0.05))
        assert ratio.value == 0.0 and ratio.slow_x == 0.0 and not ratio.censored  # kept, as 0
    # Neither gets anywhere: RLCM never reaches even a declining DDPO's end: censored, and still 0.
    ratio = pair_ratio(declining, _line(0.0, start=0.1))
    assert ratio.censored and ratio.value == 0.0


def test_a_fast_method_past_the_target_at_its_start_gives_a_lower_bound():
    slow = _line(0.005)  # target 0.45, reached at 90 s
    fast = ([0, 4, 8], [0.6, 0.7, 0.8])  # already above 0.45 untrained; its first evaluation after updates: 4 s
    ratio = pair_ratio(slow, fast)
    assert ratio.bound == "lower" and ratio.value == pytest.approx(90.0 / 4.0)


def test_summary_over_seed_pairs_keeps_every_pair_with_a_t_interval():
    pairs = [pair_ratio(_line(0.005), _line(rate)) for rate in (0.05, 0.025, 0.0125)]
    summary = summarise_pairs(pairs)
    assert summary["value"] == pytest.approx(np.mean([10.0, 5.0, 2.5]))
    expected = stats.ttest_1samp([10.0, 5.0, 2.5], 0).confidence_interval(0.95)
    assert summary["ci95"] == pytest.approx([expected.low, expected.high])
    assert summary["censored"] == 0
    flat_ddpo = pair_ratio(_line(0.0, start=0.2), _line(0.05))
    never = pair_ratio(_line(0.005), _line(0.001))
    both = summarise_pairs([*pairs, flat_ddpo, never])
    assert both["value"] == pytest.approx(np.mean([10.0, 5.0, 2.5, 0.0, 0.9])) and len(both["pairs"]) == 5
    assert both["censored"] == 1 and [p["censored"] for p in both["pairs"]] == [False] * 4 + [True]
    assert summarise_pairs([flat_ddpo])["ci95"] is None  # one pair: no interval
