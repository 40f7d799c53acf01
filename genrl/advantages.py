"""Advantages from terminal rewards: the per-prompt running statistics of DDPO and RLCM, plain batch statistics,
or GRPO's group statistics (G consecutive samples of one prompt form a group)."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch


class PerPromptStatTracker:
    """Each prompt keeps its last ``buffer_size`` rewards; until it holds ``min_count`` of them, the whole
    batch's mean and std stand in. A = (r - mean) / (std + 1e-6)."""

    def __init__(self, buffer_size: int, min_count: int):
        self.buffer_size, self.min_count = buffer_size, min_count
        self.history: dict[str, deque] = {}

    def update(self, prompts: list[str], rewards: np.ndarray) -> np.ndarray:
        rewards = np.asarray(rewards, dtype=np.float64)
        advantages = np.empty_like(rewards)
        for prompt in dict.fromkeys(prompts):
            mask = np.array([p == prompt for p in prompts])
            seen = self.history.setdefault(prompt, deque(maxlen=self.buffer_size))
            seen.extend(rewards[mask].tolist())
            pool = rewards if len(seen) < self.min_count else np.array(seen)
            advantages[mask] = (rewards[mask] - pool.mean()) / (pool.std() + 1e-6)
        return advantages

    def state_dict(self) -> dict:
        return {
            "buffer_size": self.buffer_size,
            "min_count": self.min_count,
            "history": {p: list(v) for p, v in self.history.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.buffer_size, self.min_count = state["buffer_size"], state["min_count"]
        self.history = {p: deque(v, maxlen=self.buffer_size) for p, v in state["history"].items()}


def batch_advantages(rewards: np.ndarray) -> np.ndarray:
    rewards = np.asarray(rewards, dtype=np.float64)
    return (rewards - rewards.mean()) / (rewards.std() + 1e-6)


def group_advantages(
    rewards: np.ndarray, group_size: int, normalise_std: bool = True, batch_std: bool = False
) -> np.ndarray:
    """A = r - mean(group), divided by (std + 1e-6) with ``normalise_std`` (GRPO; off as in Dr. GRPO): the group's
    std, or with ``batch_std`` that of all ``rewards`` (Flow-GRPO's global_std)."""
    groups = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    centred[np.ptp(groups, axis=1) == 0] = 0  # exactly: the mean of equal floats need not round back to them
    if normalise_std:
        centred = centred / ((groups.std() if batch_std else groups.std(axis=1, keepdims=True)) + 1e-6)
    return centred.reshape(-1)


def informative_groups(advantages: torch.Tensor, group_size: int) -> torch.Tensor:
    """Indices of the samples whose group has some non-zero advantage (the others carry no gradient)."""
    keep = (advantages.reshape(-1, group_size) != 0).any(dim=1)
    return torch.nonzero(keep.repeat_interleave(group_size)).squeeze(1)


def compute_advantages(
    prompts: list[str],
    rewards: torch.Tensor,
    tracker: PerPromptStatTracker | None,
    group_size: int = 1,
    group_std: bool = True,
    batch_std: bool = False,
) -> torch.Tensor:
    values = rewards.detach().cpu().numpy()
    if group_size > 1:
        adv = group_advantages(values, group_size, group_std, batch_std)
    elif tracker is not None:
        adv = tracker.update(prompts, values)
    else:
        adv = batch_advantages(values)
    return torch.as_tensor(adv, dtype=torch.float32, device=rewards.device)
