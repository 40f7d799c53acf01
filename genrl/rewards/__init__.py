"""Rewards: the protocol (``base``), the built-ins, and lookup by name or ``module:function``."""

from __future__ import annotations

import importlib

from genrl.errors import GenrlError
from genrl.rewards.base import CheckedReward, RewardFn, is_differentiable
from genrl.rewards.jpeg import jpeg_compressibility, jpeg_incompressibility
from genrl.rewards.shapes import shapes_alignment

BUILTIN_REWARDS: dict[str, RewardFn] = {
    "jpeg_compressibility": jpeg_compressibility,
    "jpeg_incompressibility": jpeg_incompressibility,
    "shapes_alignment": shapes_alignment,
}

__all__ = ["BUILTIN_REWARDS", "CheckedReward", "RewardFn", "is_differentiable", "load_reward"]


def load_reward(spec: str) -> CheckedReward:
    """A built-in name, or ``package.module:function`` for a reward of your own."""
    if spec in BUILTIN_REWARDS:
        return CheckedReward(BUILTIN_REWARDS[spec], spec)
    if ":" not in spec:
        raise GenrlError(
            f"unknown reward '{spec}'; use one of {', '.join(sorted(BUILTIN_REWARDS))} or 'package.module:function'"
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GenrlError(
            f"reward '{spec}': cannot import module '{module_name}' ({exc}); check it is on PYTHONPATH"
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise GenrlError(f"reward '{spec}': module '{module_name}' has no callable '{attr}'; check the name")
    return CheckedReward(fn, spec)
