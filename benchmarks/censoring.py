"""Survival statistics for times to the fidelity target, as protocol v3 (docs/benchmark/PROTOCOL.md) names them.

A run that never meets the target within its budget is right-censored at its end: its time to target is only known
to be longer. Treating that end as a measurement (v2's t-interval) lets the budget set the size of a ratio, so v3
reads each method's times as a survival sample instead:

- the **Kaplan-Meier** curve S(t), the share of runs not yet at the target after t, with its pointwise 95% log-log
  interval (Greenwood's variance);
- the **median** time to target, where S first falls to 0.5, and its interval where the interval's bands do (the
  inversion of the pointwise interval, Brookmeyer and Crowley's construction); "not reached" where S stays above 0.5,
  because then the data only say the median is longer than every time followed;
- the **restricted mean** within tau, the area under S up to tau: always defined, and with every censoring at or
  after tau it is the mean of min(time, tau); the ratio of two, with a paired BCa bootstrap over the seed pairs;
- the **sign test** over the informative seed pairs: who got there first, without any size.

Ties between a reached and a censored time are ordered as survival analysis orders them: the event first (a run
censored at t was still short of the target at t).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
"""The confidence level of every interval here."""
RESAMPLES = 9999
"""Bootstrap resamples of the seed pairs (the protocol's number)."""
BOOTSTRAP_SEED = 0
"""The bootstrap's fixed seed, so that the same runs give the same interval to the last digit."""


@dataclass(frozen=True)
class Curve:
    """A Kaplan-Meier curve, a step function that is 1 before ``times[0]`` and ``survival[i]`` from ``times[i]``
    (until the next time); ``low`` and ``high`` are its pointwise interval there."""

    times: np.ndarray
    """The distinct times at which a run reached the target, in order."""
    survival: np.ndarray
    low: np.ndarray
    high: np.ndarray
    followed: float
    """The longest time any run was followed (reached or censored): the curve says nothing beyond it."""

    def at(self, t: float) -> float:
        """S(t): the share of runs not yet at the target after ``t``."""
        i = np.searchsorted(self.times, t, side="right")
        return 1.0 if i == 0 else float(self.survival[i - 1])


def _as_sample(times: Sequence[float], censored: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    t, c = np.asarray(times, dtype=float), np.asarray(censored, dtype=bool)
    if t.ndim != 1 or t.shape != c.shape or not len(t):
        raise ValueError("times and censored flags must be two equally long, non-empty 1-d sequences")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError("times to target must be finite and not negative")
    return t, c


def kaplan_meier(times: Sequence[float], censored: Sequence[bool], level: float = LEVEL) -> Curve:
    """The Kaplan-Meier curve of ``times`` (``censored[i]``: run i never reached the target and was followed to
    ``times[i]``), with the pointwise log-log interval at ``level``.

    The log-log interval (on log(-log S), Greenwood's variance) rather than the plain one: it stays inside [0, 1]
    and is the one whose inversion gives the median's interval the protocol names. Where S is 0 the interval is
    [0, 0] (no run left at risk)."""
    t, c = _as_sample(times, censored)
    event_times = np.unique(t[~c])
    z = stats.norm.ppf(0.5 + level / 2)
    survival, low, high = [], [], []
    s, greenwood = 1.0, 0.0
    for u in event_times:
        at_risk = int(np.sum(t >= u))
        reached = int(np.sum((t == u) & ~c))
        s *= 1 - reached / at_risk
        greenwood = greenwood + reached / (at_risk * (at_risk - reached)) if at_risk > reached else math.inf
        survival.append(s)
        if s <= 0 or not math.isfinite(greenwood):
            low.append(0.0)
            high.append(0.0)
            continue
        spread = z * math.sqrt(greenwood) / abs(math.log(s))
        low.append(s ** math.exp(spread))
        high.append(s ** math.exp(-spread))
    as_array = lambda values: np.asarray(values, dtype=float)
    return Curve(event_times, as_array(survival), as_array(low), as_array(high), float(t.max()))


@dataclass(frozen=True)
class Median:
    """A Kaplan-Meier median time to target with its interval; None where the curve (or a band of its interval)
    never falls to 0.5 within the times followed: the median (or that end) is then only known to exceed
    ``followed``."""

    value: float | None
    low: float | None
    high: float | None
    followed: float

    @property
    def reached(self) -> bool:
        return self.value is not None


def _first_at_or_below(times: np.ndarray, values: np.ndarray, level: float) -> float | None:
    hits = np.nonzero(values <= level + 1e-12)[0]  # a curve at exactly 0.5 has reached it (5 of 10 at the target)
    return float(times[hits[0]]) if len(hits) else None


def median(curve: Curve) -> Median:
    """The curve's median, the first time S(t) <= 0.5, and its 95% interval, the times whose pointwise interval
    holds 0.5: from the first time the lower band falls to 0.5 (it lies below S, so it gets there first) to the
    first time the upper band does."""
    return Median(
        _first_at_or_below(curve.times, curve.survival, 0.5),
        _first_at_or_below(curve.times, curve.low, 0.5),
        _first_at_or_below(curve.times, curve.high, 0.5),
        curve.followed,
    )


def median_ratio(slow: Median, fast: Median) -> tuple[float | None, list[float | None]]:
    """How many times sooner ``fast``'s median is than ``slow``'s, with the interval the protocol names: slow's
    lower over fast's upper, slow's upper over fast's lower. An end is None where a median end it needs is not
    reached (the ratio is then unbounded on that side); the value is None where either median is."""
    divide = lambda a, b: None if a is None or b is None else a / b
    return divide(slow.value, fast.value), [divide(slow.low, fast.high), divide(slow.high, fast.low)]


def restricted_means(times: np.ndarray, censored: np.ndarray, tau: float) -> np.ndarray:
    """The area under the Kaplan-Meier curve of each row of ``times`` (last axis: the runs) from 0 to ``tau``.

    Vectorised over the leading axes so that the bootstrap evaluates all its resamples in one call. It walks the
    runs in time order, an event multiplying S by 1 - 1/(runs left): over tied events that product is the grouped
    Kaplan-Meier factor, and with events before censorings at a tie it is the Kaplan-Meier curve. Past the last time
    followed S is held at its last value; ``restricted_mean`` refuses a tau that needs that."""
    t, c = np.asarray(times, dtype=float), np.asarray(censored, dtype=bool)
    order = np.lexsort((c, t), axis=-1)  # by time, events before censorings at a tie
    t, c = np.take_along_axis(t, order, -1), np.take_along_axis(c, order, -1)
    left = t.shape[-1] - np.arange(t.shape[-1])
    survival = np.cumprod(np.where(c, 1.0, 1.0 - 1.0 / left), axis=-1)
    clipped = np.minimum(t, tau)
    widths = np.diff(clipped, axis=-1, append=np.full(t.shape[:-1] + (1,), float(tau)))
    return clipped[..., 0] + np.sum(survival * widths, axis=-1)


def restricted_mean(times: Sequence[float], censored: Sequence[bool], tau: float) -> float:
    """The restricted mean time to target within ``tau``: the area under the Kaplan-Meier curve up to ``tau``."""
    t, c = _as_sample(times, censored)
    last = np.argmax(t)
    if tau > t[last] and c[last]:
        raise ValueError(f"tau {tau} is past the longest run followed ({t[last]}): the curve is not known up to it")
    return float(restricted_means(t, c, tau))


def _seed_argument() -> dict:
    # scipy renamed random_state to rng (1.15); pass the seed under the name the installed scipy reads.
    return {"rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state": BOOTSTRAP_SEED}


@dataclass(frozen=True)
class RestrictedRatio:
    """slow's restricted mean time to target over fast's, both within ``tau``, with a 95% BCa interval over the
    seed pairs (None, with ``why``, where there is none)."""

    tau: float
    slow: float
    fast: float
    ratio: float
    ci95: list[float] | None
    why_no_interval: str | None = None


def restricted_ratio(
    slow_times: Sequence[float],
    slow_censored: Sequence[bool],
    fast_times: Sequence[float],
    fast_censored: Sequence[bool],
    tau: float,
) -> RestrictedRatio:
    """The ratio of the two restricted means within ``tau`` (the i-th run of each is seed pair i) with a paired BCa
    bootstrap: 9999 resamples of the seed pairs, seed 0 (``RESAMPLES``, ``BOOTSTRAP_SEED``). Resampling pairs
    rather than each method alone keeps what the seed shares between them (the evaluation set, the prompts).

    Where every resample gives the same ratio (every pair alike) the interval is that ratio; with fewer than 2
    pairs there is none."""
    st, sc = _as_sample(slow_times, slow_censored)
    ft, fc = _as_sample(fast_times, fast_censored)
    if len(st) != len(ft):
        raise ValueError("a paired ratio needs as many runs of each method")
    slow, fast = restricted_mean(st, sc, tau), restricted_mean(ft, fc, tau)
    ratio = slow / fast
    if len(st) < 2:
        return RestrictedRatio(tau, slow, fast, ratio, None, "one seed pair: no interval")
    statistic = lambda a, b, x, y, axis=-1: restricted_means(a, b, tau) / restricted_means(x, y, tau)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # every pair alike: handled below
        result = stats.bootstrap(
            (st, sc.astype(float), ft, fc.astype(float)),
            statistic,
            n_resamples=RESAMPLES,
            vectorized=True,
            paired=True,
            confidence_level=LEVEL,
            method="BCa",
            **_seed_argument(),
        )
    low, high = result.confidence_interval
    if np.ptp(result.bootstrap_distribution) == 0:
        return RestrictedRatio(tau, slow, fast, ratio, [ratio, ratio])
    if not (math.isfinite(low) and math.isfinite(high)):
        return RestrictedRatio(tau, slow, fast, ratio, None, "the BCa interval is not defined for these pairs")
    return RestrictedRatio(tau, slow, fast, ratio, [float(low), float(high)])


@dataclass(frozen=True)
class SignTest:
    """Who reached the target first over the seed pairs. ``informative``: pairs where at least one reached it
    (``fast_wins + slow_wins + ties``); ``p``: the two-sided exact binomial test (p = 0.5) of the wins, ties left
    out as a sign test leaves them; None where no pair has a winner."""

    fast_wins: int
    slow_wins: int
    ties: int
    both_censored: int
    p: float | None

    @property
    def informative(self) -> int:
        return self.fast_wins + self.slow_wins + self.ties


def sign_test(
    slow_times: Sequence[float],
    slow_censored: Sequence[bool],
    fast_times: Sequence[float],
    fast_censored: Sequence[bool],
) -> SignTest:
    """Per seed pair, who reached the target sooner: a pair where only one reached counts for it, one where both
    reached at the same time is a tie, one where neither did says nothing (not informative, never counted)."""
    st, sc = _as_sample(slow_times, slow_censored)
    ft, fc = _as_sample(fast_times, fast_censored)
    if len(st) != len(ft):
        raise ValueError("a paired test needs as many runs of each method")
    fast_wins = slow_wins = ties = both = 0
    for s, s_out, f, f_out in zip(st, sc, ft, fc):
        if s_out and f_out:
            both += 1
        elif s_out or (not f_out and f < s):
            fast_wins += 1
        elif f_out or s < f:
            slow_wins += 1
        else:
            ties += 1
    decided = fast_wins + slow_wins
    p = float(stats.binomtest(fast_wins, decided, 0.5, alternative="two-sided").pvalue) if decided else None
    return SignTest(fast_wins, slow_wins, ties, both, p)
