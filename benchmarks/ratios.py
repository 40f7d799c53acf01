"""The paper's ratio, read from evaluation curves: how much sooner one method reaches another's final reward.

A curve is a run's evaluations in order: ``x`` (training wall-clock or reward queries) against ``y`` (the task
reward on the fixed evaluation set), the first point being the model before any update (x = 0).

For one pair of runs (the same seed of a slow and a fast method), the target is the slow run's final reward, the
mean of its last ``FINAL_POINTS`` evaluations. Each run's time to the target is where its curve, drawn as straight
lines between evaluations, first reaches it; the ratio is slow / fast. Every pair is kept (PROTOCOL.md):

- a slow run that ends at or below its start is at its final reward from the start: its time, and the ratio, is 0;
- a fast run that never reaches the target is censored at its budget: its ratio is an upper bound;
- a fast run that starts past the target is divided by its first evaluation after updates: a lower bound.

Over the pairs: the arithmetic mean (a ratio can be 0) and its 95% t-interval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from benchmarks.fidelity import t_interval

FINAL_POINTS = 3
"""Evaluations averaged into a run's final reward."""


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
    value: float
    """slow's x to reach the target over fast's."""
    target: float
    slow_x: float
    fast_x: float
    bound: str | None = None
    """"upper": fast never reached the target (censored at its budget); "lower": fast started past it."""

    @property
    def censored(self) -> bool:
        return self.bound == "upper"


def pair_ratio(slow: tuple[list, list], fast: tuple[list, list]) -> PairRatio:
    """``slow`` and ``fast`` are (x, y) curves starting at the untrained model (x[0] = 0)."""
    (slow_x, slow_y), (fast_x, fast_y) = slow, fast
    target = min(final_reward(slow_y), max(slow_y[-FINAL_POINTS:]))  # a mean of equal floats can round above them
    slow_time = first_reach(slow_x, slow_y, target)  # its own curve reaches its final reward: never None
    fast_time = first_reach(fast_x, fast_y, target)
    if fast_time is None:
        return PairRatio(slow_time / fast_x[-1], target, slow_time, fast_x[-1], bound="upper")
    if fast_time == 0:
        # Past the target before any update: no time to divide by; its first evaluation after updates bounds it.
        return PairRatio(slow_time / fast_x[1], target, slow_time, fast_x[1], bound="lower" if slow_time else None)
    return PairRatio(slow_time / fast_time, target, slow_time, fast_time)


def summarise_pairs(pairs: list[PairRatio]) -> dict:
    """The mean over every seed pair, its 95% t-interval (None with one pair), and the censored pairs' count."""
    values = [p.value for p in pairs]
    return {
        "value": float(np.mean(values)),
        "ci95": t_interval(values),
        "pairs": [{**asdict(p), "censored": p.censored} for p in pairs],
        "censored": sum(p.censored for p in pairs),
    }
