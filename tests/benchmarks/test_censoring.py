"""benchmarks/censoring.py against an independent computation: scipy's Kaplan-Meier (``stats.ecdf`` on
``stats.CensoredData``) for the curve and its log-log band, hand-worked examples for the rest."""

import warnings

import numpy as np
import pytest
from scipy import stats

from benchmarks.censoring import (
    RESAMPLES,
    Median,
    kaplan_meier,
    median,
    median_ratio,
    restricted_mean,
    restricted_ratio,
    sign_test,
)

# Times to target in reward queries, censored at the budget (1024) or, in wall-clock, at a run's own end.
SAMPLES = {
    "censored at the budget": ([64, 128, 128, 320, 1024, 1024, 1024], [0, 0, 0, 0, 1, 1, 1]),
    "a tie of a reach and a censoring": ([64, 128, 128, 192, 256, 256, 512, 700], [0, 0, 1, 0, 0, 1, 0, 1]),
    "censorings before reaches": ([3.5, 2.0, 7.25, 4.0, 9.0, 5.5, 6.0], [1, 0, 0, 1, 0, 0, 1]),
    "every run reaches": ([2.0, 4.0, 4.0, 6.0, 8.0], [0, 0, 0, 0, 0]),
}


def _scipy(times, censored):
    t, c = np.asarray(times, float), np.asarray(censored, bool)
    result = stats.ecdf(stats.CensoredData(uncensored=t[~c], right=t[c]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # undefined where S is 0: compared only where defined
        band = result.sf.confidence_interval(0.95, method="log-log")
    return result.sf, band


@pytest.mark.parametrize("case", list(SAMPLES))
def test_the_kaplan_meier_curve_and_its_log_log_band_are_scipys(case):
    times, censored = SAMPLES[case]
    curve = kaplan_meier(times, censored)
    sf, band = _scipy(times, censored)
    reached = sorted({t for t, c in zip(times, censored) if not c})
    assert list(curve.times) == reached
    np.testing.assert_allclose(curve.survival, sf.evaluate(curve.times), rtol=1e-12, atol=1e-15)
    grid = np.linspace(0, max(times) * 1.2, 97)
    assert [curve.at(t) for t in grid] == pytest.approx(list(sf.evaluate(grid)), rel=1e-12)
    low, high = band.low.evaluate(curve.times), band.high.evaluate(curve.times)
    defined = curve.survival > 0
    np.testing.assert_allclose(curve.low[defined], low[defined], rtol=1e-12)
    np.testing.assert_allclose(curve.high[defined], high[defined], rtol=1e-12)
    assert np.all(curve.low[~defined] == 0) and np.all(curve.high[~defined] == 0)  # nobody left at risk
    assert curve.followed == max(times)


@pytest.mark.parametrize("case", list(SAMPLES))
def test_the_median_and_its_interval_invert_the_band(case):
    times, censored = SAMPLES[case]
    sf, band = _scipy(times, censored)
    points = sf.quantiles  # every time the curve or its band can step
    first = lambda values: next((float(t) for t, v in zip(points, values) if v <= 0.5), None)
    low = np.nan_to_num(band.low.evaluate(points), nan=0.0)  # S = 0 there: the band is 0
    high = np.nan_to_num(band.high.evaluate(points), nan=0.0)
    found = median(kaplan_meier(times, censored))
    assert (found.value, found.low, found.high) == (first(sf.evaluate(points)), first(low), first(high))


def test_a_median_by_hand_and_one_exactly_at_half():
    # 4 reach of 7: S = 6/7 after 64, 4/7 after 128 (two), 3/7 after 320: the median is 320.
    assert median(kaplan_meier(*SAMPLES["censored at the budget"])).value == 320
    # 5 of 10 reach, the rest censored at the budget: S falls to exactly 0.5 at the fifth, which is the median.
    found = median(kaplan_meier([64, 64, 128, 192, 640, *[1024] * 5], [0] * 5 + [1] * 5))
    assert found.reached and found.value == 640


def test_a_median_not_reached_is_beyond_the_longest_time_followed():
    # 3 of 10 reach (DDPO on compression): S stays at 0.7.
    times, censored = [320, 640, 704, *[1024] * 7], [0, 0, 0, *[1] * 7]
    curve = kaplan_meier(times, censored)
    assert curve.survival[-1] == pytest.approx(0.7)
    found = median(curve)
    assert not found.reached and found.value is None and found.high is None and found.followed == 1024
    _, band = _scipy(times, censored)
    assert found.low == next(t for t in curve.times if band.low.evaluate(t) <= 0.5)  # its lower end can exist
    assert median(kaplan_meier([1024] * 4, [1] * 4)) == Median(None, None, None, 1024.0)


def test_the_ratio_of_medians_takes_its_interval_from_theirs():
    slow, fast = Median(640.0, 320.0, 960.0, 1024.0), Median(64.0, 64.0, 128.0, 1024.0)
    assert median_ratio(slow, fast) == (10.0, [2.5, 15.0])  # slow's low / fast's high, slow's high / fast's low
    open_above = Median(640.0, 320.0, None, 1024.0)
    assert median_ratio(open_above, fast) == (10.0, [2.5, None])
    assert median_ratio(Median(None, 320.0, None, 1024.0), fast) == (None, [2.5, None])


def test_the_restricted_mean_is_the_area_under_the_curve():
    # All censoring at the budget: the mean of min(t, tau), here with tau the budget and below it.
    times, censored = SAMPLES["censored at the budget"]
    assert restricted_mean(times, censored, 1024) == pytest.approx(np.mean(np.minimum(times, 1024)))
    assert restricted_mean(times, censored, 200) == pytest.approx(np.mean(np.minimum(times, 200)))
    # By hand, a censoring before tau: times 2, 4+, 6, 8; S = 1 to 2, 3/4 to 6, 3/8 to 8, 0 after.
    assert restricted_mean([2, 4, 6, 8], [0, 1, 0, 0], 10) == pytest.approx(2 + 4 * 0.75 + 2 * 0.375)
    assert restricted_mean([2, 4, 6, 8], [0, 1, 0, 0], 5) == pytest.approx(2 + 3 * 0.75)
    # Against scipy's curve, integrated as the step function it is.
    for times, censored in SAMPLES.values():
        sf, _ = _scipy(times, censored)
        tau = max(times)
        edges = np.concatenate([[0.0], sf.quantiles[sf.quantiles < tau], [tau]])
        area = float(np.sum(sf.evaluate(edges[:-1]) * np.diff(edges)))
        assert restricted_mean(times, censored, tau) == pytest.approx(area, rel=1e-12)
    with pytest.raises(ValueError, match="not known up to it"):
        restricted_mean([2, 4], [0, 1], 5)  # followed to 4 only


def _ratio_of_capped_means(slow, fast, tau):
    return np.mean(np.minimum(slow, tau), axis=-1) / np.mean(np.minimum(fast, tau), axis=-1)


def test_the_restricted_ratio_has_a_paired_bca_interval():
    slow = [1024, 1024, 500, 1024, 320, 1024, 1024, 1024, 896, 1024]
    slow_out = [t == 1024 for t in slow]
    fast = [64, 128, 64, 64, 128, 64, 1024, 64, 64, 128]
    fast_out = [False] * 6 + [True] + [False] * 3
    found = restricted_ratio(slow, slow_out, fast, fast_out, 1024)
    assert (found.slow, found.fast) == (pytest.approx(np.mean(slow)), pytest.approx(np.mean(fast)))
    assert found.ratio == pytest.approx(np.mean(slow) / np.mean(fast))
    # Every censoring is at tau, so the statistic is the ratio of the capped means: scipy's BCa on that, the same
    # resamples of the pairs (9999, seed 0), gives the same interval.
    expected = stats.bootstrap(
        (np.asarray(slow, float), np.asarray(fast, float)),
        lambda s, f, axis=-1: _ratio_of_capped_means(s, f, 1024),
        n_resamples=RESAMPLES,
        paired=True,
        vectorized=True,
        method="BCa",
        rng=0,
    ).confidence_interval
    assert found.ci95 == pytest.approx([expected.low, expected.high], rel=1e-9)
    assert restricted_ratio(slow, slow_out, fast, fast_out, 1024) == found  # seeded: the same to the last digit


def test_a_restricted_ratio_without_spread_or_with_one_pair():
    same = restricted_ratio([512, 512, 512], [0, 0, 0], [64, 64, 64], [0, 0, 0], 1024)
    assert same.ratio == 8 and same.ci95 == [8, 8]  # every resample the same: the interval is the ratio
    one = restricted_ratio([512], [0], [64], [0], 1024)
    assert one.ratio == 8 and one.ci95 is None and one.why_no_interval == "one seed pair: no interval"


def test_the_sign_test_counts_informative_pairs_only():
    # Pairs: fast alone reaches; neither; both at the same evaluation; fast alone; slow alone; both, fast first.
    slow = ([1024, 1024, 500, 1024, 320, 640], [1, 1, 0, 1, 0, 0])
    fast = ([64, 1024, 500, 64, 1024, 128], [0, 1, 0, 0, 1, 0])
    found = sign_test(*slow, *fast)
    assert (found.fast_wins, found.slow_wins, found.ties, found.both_censored) == (3, 1, 1, 1)
    assert found.informative == 5
    assert found.p == pytest.approx(2 * (4 + 1) / 16)  # 3 of 4 decided: P(X >= 3) = 5/16, doubled
    # RLCM first in 9 of 9 informative pairs, one both censored: p = 2 / 2**9.
    nine = sign_test([1024] * 10, [1] * 10, [64] * 9 + [1024], [0] * 9 + [1])
    assert (nine.fast_wins, nine.slow_wins, nine.both_censored) == (9, 0, 1)
    assert nine.p == pytest.approx(2 / 2**9)
    nobody = sign_test([1024, 1024], [1, 1], [1024, 1024], [1, 1])
    assert nobody.informative == 0 and nobody.p is None


def test_bad_samples_are_refused():
    with pytest.raises(ValueError):
        kaplan_meier([], [])
    with pytest.raises(ValueError):
        kaplan_meier([1.0, float("nan")], [0, 0])
    with pytest.raises(ValueError):
        restricted_ratio([1, 2], [0, 0], [1], [0], 2)
