"""The paper's headline ratios, read from evaluation curves: how much sooner one method reaches another's reward.

A curve is a run's evaluations in order: ``x`` (training wall-clock or reward queries) against ``y`` (the fixed
evaluation set's mean reward), the first point being the model before any update (x = 0).

For one pair of runs (the same seed of a slow and a fast method), the target is the slow run's final reward, the
mean of its last ``FINAL_POINTS`` evaluations. Each run's time to the target is where its curve, drawn as straight
lines between evaluations, first reaches it; the ratio is slow / fast. Over several seed pairs: the mean ratio and
a bootstrap 95% interval of that mean.

A pair whose slow run gains nothing over its start has no target to time. When the fast run still reaches that
reward it is left out of the mean and counted: its ratio is unbounded (the slow method never gets anywhere), so
leaving it out can only lower the mean. When the fast run does not reach it either, nothing is measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FINAL_POINTS = 3
"""Evaluations averaged into a run's final reward."""
BOOTSTRAP_SAMPLES = 10_000


def final_reward(y: list[float] | np.ndarray) -> float:
    return float(np.mean(np.asarray(y, dtype=float)[-FINAL_POINTS:]))


def first_reach(x: list[float] | np.ndarray, y: list[float] | np.ndarray, target: float) -> float | None:
    """The first x at which the piecewise-linear curve through (x, y) reaches ``target``; None if it never does."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    hits = np.nonzero(y >= target)[0]
    if not len(hits):
        return None
    i = hits[0]
    if i == 0:
        return float(x[0])
    fraction = (target - y[i - 1]) / (y[i] - y[i - 1])  # y[i - 1] < target <= y[i]
    return float(x[i - 1] + fraction * (x[i] - x[i - 1]))


@dataclass
class PairRatio:
    value: float | None
    """slow's x to reach the target over fast's; None when it cannot be measured (see ``why_none``)."""
    target: float
    slow_x: float | None
    fast_x: float | None
    lower_bound: bool = False
    """fast started past the target: ``value`` divides by its first evaluation after updates, a lower bound."""
    why_none: str | None = None
    left_out: bool = False
    """slow gained nothing while fast reached its reward: an unbounded ratio, left out of the mean."""


def pair_ratio(slow: tuple[list, list], fast: tuple[list, list], slow_name: str, fast_name: str) -> PairRatio:
    """``slow`` and ``fast`` are (x, y) curves starting at the untrained model (x[0] = 0)."""
    (slow_x, slow_y), (fast_x, fast_y) = slow, fast
    target = min(final_reward(slow_y), max(slow_y[-FINAL_POINTS:]))  # a mean of equal floats can round above them
    slow_time, fast_time = first_reach(slow_x, slow_y, target), first_reach(fast_x, fast_y, target)
    if fast_time is None:
        return PairRatio(None, target, slow_time, None, why_none=f"{fast_name} never reaches {slow_name}'s reward")
    if not target - slow_y[0] > 1e-9 * max(1.0, abs(target)):
        why = f"{slow_name} gains nothing over its start"
        return PairRatio(None, target, None, fast_time, why_none=why, left_out=True)
    if fast_y[0] >= target:
        # Past the target before any update: no time to divide by; its first evaluation after updates bounds it.
        return PairRatio(slow_time / fast_x[1], target, slow_time, fast_x[1], lower_bound=True)
    return PairRatio(slow_time / fast_time, target, slow_time, fast_time)


def bootstrap_ci(values: list[float], seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the mean, resampling the values (seed pairs) with replacement."""
    v = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(len(v), size=(BOOTSTRAP_SAMPLES, len(v)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def summarise_pairs(pairs: list[PairRatio]) -> dict:
    """The mean over the measured seed pairs and its interval, ``left_out`` the pairs left out (see the module's
    docstring); null with the reason when a fast run misses its target or no pair is measured."""
    missing = [p.why_none for p in pairs if p.value is None and not p.left_out]
    values = [p.value for p in pairs if p.value is not None]
    left_out = [p.why_none for p in pairs if p.left_out]
    summary: dict = {"pairs": [asdict(p) for p in pairs], "left_out": len(left_out)}
    if missing or not values:
        why = "; ".join(sorted(set(missing or left_out)))
        summary.update(value=None, ci95=None, lower_bound=False, why_none=why)
    else:
        summary.update(
            value=float(np.mean(values)),
            ci95=list(bootstrap_ci(values)),
            lower_bound=any(p.lower_bound for p in pairs),
            why_none=None,
        )
    return summary
