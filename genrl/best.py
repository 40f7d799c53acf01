"""The best evaluation so far, for ``--keep-best`` and ``--early-stop-patience``.

A reward can be raised by wrecking the pictures (shapes erased, merged, recoloured), so the best evaluation is the
one with the highest eval reward among those that keep the picture: eval prompt accuracy at least
``--accuracy-floor`` times the starting evaluation's (epoch 0, the untrained model). Where prompt accuracy is not
measured (prompts outside the shapes world) every evaluation keeps it.

The record is rebuilt from metrics.jsonl on ``--resume`` (which holds every evaluation up to the checkpoint), so a
checkpoint carries no state of its own for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class BestEvaluation:
    accuracy_floor: float
    """The share of the starting prompt accuracy an evaluation must keep to count."""
    start_accuracy: float | None = None
    epoch: int | None = None
    """The best evaluation's epoch; None before any evaluation counted."""
    reward: float = -math.inf
    accuracy: float | None = None
    since_best: int = 0
    """Evaluations since the best one (0: the latest evaluation is the best)."""
    evaluations: int = 0

    def keeps_picture(self, evaluation: dict) -> bool:
        accuracy = evaluation.get("eval_prompt_accuracy")
        if accuracy is None or self.start_accuracy is None:
            return True
        return accuracy >= self.accuracy_floor * self.start_accuracy - 1e-9  # at the floor: 0.8 * 0.8 > 0.64

    def observe(self, evaluation: dict) -> bool:
        """Take one evaluation's logged metrics (``epoch``, ``eval_reward_mean``, maybe ``eval_prompt_accuracy``),
        the first of a run being its start; True where it is the new best."""
        if not self.evaluations:
            self.start_accuracy = evaluation.get("eval_prompt_accuracy")
        self.evaluations += 1
        if self.keeps_picture(evaluation) and evaluation["eval_reward_mean"] > self.reward:
            self.epoch, self.reward = evaluation["epoch"], evaluation["eval_reward_mean"]
            self.accuracy = evaluation.get("eval_prompt_accuracy")
            self.since_best = 0
            return True
        self.since_best += 1
        return False

    @classmethod
    def replay(cls, accuracy_floor: float, history: list[dict]) -> BestEvaluation:
        """The record after the evaluations logged in ``history`` (a run's metrics, in order)."""
        best = cls(accuracy_floor)
        for metrics in history:
            if "eval_reward_mean" in metrics:
                best.observe(metrics)
        return best

    def describe(self) -> str:
        accuracy = f", prompt accuracy {self.accuracy:.4f}" if self.accuracy is not None else ""
        return f"epoch {self.epoch}: eval_reward_mean {self.reward:.4f}{accuracy}"
