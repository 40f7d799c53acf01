"""Gymnasium environments that turn denoising into an MDP: ``genrl/LCM-v0`` (RLCM) and ``genrl/DDPM-v0`` (DDPO).

    env = make_env("lcm", num_envs=8, pipeline=pipe, reward_fn=reward, num_steps=8)

which is ``gymnasium.make_vec("genrl/LCM-v0", num_envs=8, pipeline=pipe, reward_fn=reward, num_steps=8)``.
``genrl.envs.base`` describes the observations, actions, rewards and ``info`` of both.
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym

from genrl.envs.base import DenoisingEnv
from genrl.envs.ddpm import DDPMEnv
from genrl.envs.lcm import LCMEnv
from genrl.rewards import RewardFn

__all__ = ["ENV_IDS", "DDPMEnv", "DenoisingEnv", "LCMEnv", "make_env"]

ENV_IDS = {"lcm": "genrl/LCM-v0", "ddpm": "genrl/DDPM-v0"}

for _id, _cls in ((ENV_IDS["lcm"], "LCMEnv"), (ENV_IDS["ddpm"], "DDPMEnv")):
    if _id not in gym.registry:
        gym.register(id=_id, vector_entry_point=f"genrl.envs:{_cls}")


def make_env(
    kind: Literal["lcm", "ddpm"],
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
    stochastic already, and it rejects True. Raises ``ValueError`` where the pipeline, the steps and the resolution
    do not go together.
    """
    if kind not in ENV_IDS:
        raise ValueError(f"env kind must be one of {sorted(ENV_IDS)}, got {kind!r}")
    options: dict[str, Any] = {"num_steps": num_steps, "resolution": resolution}
    if kind == "lcm":
        options["noise_last_step"] = noise_last_step
    elif noise_last_step:
        raise ValueError("noise_last_step is an LCM option: every DDIM step of the DDPM env is noised already")
    env = gym.make_vec(ENV_IDS[kind], num_envs=num_envs, pipeline=pipeline, reward_fn=reward_fn, **options)
    # The vector entry point builds the batched env itself: make_vec wraps nothing, so this is the env.
    assert isinstance(env, DenoisingEnv), type(env)
    return env
