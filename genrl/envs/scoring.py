"""The one place where a batch of decoded images gets its reward: the env's last step and the background scoring
of ``genrl.rollout`` both call ``score_images``, so the two cannot drift apart (say, one dropping the metadata)."""

from __future__ import annotations

import time
from typing import Any

import torch

from genrl.rewards import CheckedReward


def score_images(
    reward: CheckedReward, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
    """``reward`` of ``images`` (B, 3, H, W) in [0, 1] for their ``prompts`` and prompt ``metadata``: the rewards
    (B,), a composite reward's parts (each (B,)) and the seconds the reward took. Safe to run in another thread
    while the env samples on: it reads nothing of the env, only what it is given."""
    start = time.perf_counter()
    rewards, parts = reward.score(images, prompts, metadata)
    return rewards, parts, time.perf_counter() - start
