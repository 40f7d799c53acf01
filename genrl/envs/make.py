"""``make_env``: a family's batched env, built the Gymnasium way from the id the family registry gave it."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from genrl.envs.base import DenoisingEnv
from genrl.families import ENV_IDS, family
from genrl.rewards import RewardFn


def make_env(
    kind: str,
    num_envs: int,
    pipeline: Any,
    reward_fn: RewardFn | None,
    num_steps: int,
    resolution: int | None = None,
    noise_last_step: bool = False,
) -> DenoisingEnv:
    """The ``kind`` env of ``num_envs`` images, built by ``gymnasium.make_vec`` from its registered id.

    ``reward_fn=None`` leaves the scoring to the caller (the last step returns the decoded images and NaN rewards).
    ``resolution``: the image size (default: the model's). ``noise_last_step`` is LCM's: the DDPM env's steps are
    stochastic already, and it rejects True. Raises ``ValueError`` for an unknown ``kind`` and where the pipeline,
    the steps and the resolution do not go together.
    """
    options: dict[str, Any] = {"num_steps": num_steps, "resolution": resolution}
    options.update(family(kind).env_options(noise_last_step))
    env = gym.make_vec(ENV_IDS[kind], num_envs=num_envs, pipeline=pipeline, reward_fn=reward_fn, **options)
    # The vector entry point builds the batched env itself: make_vec wraps nothing, so this is the env.
    assert isinstance(env, DenoisingEnv), type(env)
    return env
