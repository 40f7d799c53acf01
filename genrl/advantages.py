"""Advantages from terminal rewards: the per-prompt running statistics of DDPO and RLCM, or plain batch stats."""

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


def compute_advantages(prompts: list[str], rewards: torch.Tensor, tracker: PerPromptStatTracker | None) -> torch.Tensor:
    values = rewards.detach().cpu().numpy()
    adv = tracker.update(prompts, values) if tracker is not None else batch_advantages(values)
    return torch.as_tensor(adv, dtype=torch.float32, device=rewards.device)
