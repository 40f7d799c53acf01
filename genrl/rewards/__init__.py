"""Rewards: the protocol and its checks (``base``), the built-ins, and lookup by name (``registry``)."""

from genrl.rewards.base import CheckedReward, RewardFn, is_differentiable
from genrl.rewards.jpeg import jpeg_compressibility, jpeg_incompressibility
from genrl.rewards.registry import BUILTIN_REWARDS, CompositeReward, load_reward, reward_names

__all__ = [
    "BUILTIN_REWARDS",
    "CheckedReward",
    "CompositeReward",
    "RewardFn",
    "is_differentiable",
    "jpeg_compressibility",
    "jpeg_incompressibility",
    "load_reward",
    "reward_names",
]
