"""The reward protocol.

A reward is any callable ``reward(images, prompts, metadata) -> rewards`` where ``images`` is a float tensor
(B, 3, H, W) in [0, 1], ``prompts`` a list of B strings, ``metadata`` a list of B dicts, and ``rewards`` a
tensor (or array or list) of B floats. A reward whose gradient flows to ``images`` sets the attribute
``differentiable = True`` and keeps the graph; every other reward is treated as a black box.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from genrl.errors import GenrlError
from genrl.plugins import describe

MAX_ABS_REWARD = 1e15
"""Larger rewards are refused: float32 means, variances and advantages over a million of them stay finite."""


@runtime_checkable
class RewardFn(Protocol):
    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> Any: ...


def is_differentiable(reward: RewardFn) -> bool:
    return bool(getattr(reward, "differentiable", False))


class CheckedReward:
    """Wraps a user's reward: turns its output into a float32 tensor (B,) and its failures into ``GenrlError``."""

    def __init__(self, fn: RewardFn, name: str):
        self.fn, self.name = fn, name
        self.differentiable = is_differentiable(fn)

    def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]) -> torch.Tensor:
        return self.score(images, prompts, metadata)[0]

    def score(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The reward, and for a composite reward each of its parts (checked and named on their own)."""
        parts: dict[str, torch.Tensor] = {}
        try:
            if hasattr(self.fn, "components"):
                parts = self.fn.components(images, prompts, metadata)
                out = self.fn.combine(parts)
            else:
                out = self.fn(images, prompts, metadata)
        except GenrlError:
            raise
        # The user's code: report it, in one line, as theirs. SystemExit too (a stray sys.exit() or a library that
        # exits), which would otherwise end training with no word; KeyboardInterrupt stays the user's own stop.
        except (Exception, SystemExit) as exc:
            raise GenrlError(f"reward '{self.name}' raised {describe(exc)}; fix the reward function") from exc
        return self.check(out, len(prompts), images.dtype), parts

    def check(self, out: Any, n: int, image_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``out`` as float32 (B,), or float64 where the images were (a double-precision gradient check)."""
        try:
            rewards = torch.as_tensor(np.asarray(out) if not torch.is_tensor(out) else out)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise GenrlError(
                f"reward '{self.name}' returned {type(out).__name__}, not numbers; return a tensor of {n} floats"
            ) from exc
        if rewards.device.type == "meta":
            raise GenrlError(
                f"reward '{self.name}' returned a tensor on the meta device, which holds no values; "
                "load the reward model's weights (not on device='meta') and return real numbers"
            )
        if rewards.shape != (n,):
            raise GenrlError(
                f"reward '{self.name}' returned shape {tuple(rewards.shape)} for {n} images; "
                f"return one float per image, shape ({n},)"
            )
        if not (rewards.is_floating_point() or rewards.dtype in (torch.int32, torch.int64, torch.bool)):
            raise GenrlError(f"reward '{self.name}' returned dtype {rewards.dtype}; return floats")
        rewards = rewards.to(torch.float64 if image_dtype == torch.float64 else torch.float32)
        bad = ~torch.isfinite(rewards.detach())
        if bad.any():
            kind = "NaN" if math.isnan(rewards.detach()[bad][0].item()) else "inf"
            raise GenrlError(
                f"reward '{self.name}' returned {kind} for {int(bad.sum())} of {n} images; "
                "make the reward finite for every image"
            )
        too_large = rewards.detach().abs() > MAX_ABS_REWARD
        if too_large.any():
            raise GenrlError(
                f"reward '{self.name}' returned {rewards.detach()[too_large][0].item():.3g} for {int(too_large.sum())} "
                f"of {n} images, over {MAX_ABS_REWARD:.0e} in magnitude, where batch statistics overflow; "
                "scale the reward down"
            )
        return rewards
