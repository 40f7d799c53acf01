"""The protocol's target (docs/benchmark/PROTOCOL.md): a fixed gain in the task's reward with the picture kept.

A run reaches it at its first evaluation whose task reward is at least ``DELTA`` above its own start while its
prompt accuracy keeps ``ACCURACY_KEPT`` of the start (genrl/best.py's rule); a run that never does is censored at
its budget. Also the intervals the protocol names: a t-interval, on log ratios for ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from genrl.best import BestEvaluation

DELTA = 0.05
"""The gain over a run's own start that counts as reaching the target, in the task reward's units."""
ACCURACY_KEPT = 0.8
"""The share of its starting prompt accuracy an evaluation must keep (``--accuracy-floor``)."""
TASK_REWARDS = {
    "compression": "jpeg_compressibility",
    "incompression": "jpeg_incompressibility",
    "alignment": "shapes_alignment",
    "aesthetic": "aesthetic",
}
"""Each task's own reward: where a method trains on a composite, its progress is read from this part."""


def task_reward(record: dict, task: str) -> float:
    """An evaluation's task reward: its composite's part of that name, or the whole eval reward."""
    return record.get("eval_reward_parts", {}).get(TASK_REWARDS.get(task, ""), record["eval_reward_mean"])


def evaluations(metrics: list[dict]) -> list[dict]:
    return [m for m in metrics if "eval_reward_mean" in m]


@dataclass
class Reach:
    """Where a run first met the target, or (``censored``) where its budget ended."""

    wall_time_s: float
    cpu_time_s: float
    reward_queries: float
    censored: bool
    epoch: int
    """The evaluation's epoch: where the target was met, or the run's last."""


def reach(metrics: list[dict], task: str, delta: float = DELTA) -> Reach:
    points = evaluations(metrics)
    start = points[0]
    kept = BestEvaluation(ACCURACY_KEPT, start_accuracy=start.get("eval_prompt_accuracy"))
    base = task_reward(start, task)
    for m in points[1:]:
        if task_reward(m, task) - base >= delta and kept.keeps_picture(m):
            return Reach(m["wall_time_s"], m.get("cpu_time_s", math.nan), m["reward_queries"], False, m["epoch"])
    last = metrics[-1]
    return Reach(last["wall_time_s"], last.get("cpu_time_s", math.nan), last["reward_queries"], True, last["epoch"])


def t_interval(values: list[float], level: float = 0.95) -> list[float] | None:
    """The t-interval of the mean; None with fewer than 2 values."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return [float(v.mean() - half), float(v.mean() + half)]


def geometric_mean_ratio(ratios: list[float]) -> tuple[float, list[float] | None]:
    """The geometric mean of positive ratios and its 95% t-interval, computed on their logs."""
    logs = np.log(np.asarray(ratios, dtype=float))
    interval = t_interval(list(logs))
    return float(np.exp(logs.mean())), [float(np.exp(x)) for x in interval] if interval else None


def standard_errors(values: list[float]) -> float:
    """The mean over its standard error (n - 1 in the std); inf where every value is the same non-zero number."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return math.nan
    se = v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean() / se) if se > 0 else (math.inf if v.mean() else math.nan)
