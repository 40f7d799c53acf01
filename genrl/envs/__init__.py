"""Gymnasium environments that turn denoising into an MDP: ``genrl/LCM-v0`` (RLCM) and ``genrl/DDPM-v0`` (DDPO).

Each id is registered twice over. Its ``vector_entry_point`` is the batched torch env that training uses:

    env = make_env("lcm", num_envs=8, pipeline=pipe, reward_fn=reward, num_steps=8)

which is ``gymnasium.make_vec("genrl/LCM-v0", num_envs=8, pipeline=pipe, reward_fn=reward, num_steps=8)``.
``genrl.envs.base`` describes the observations, actions (torch tensors, or numpy arrays), rewards and ``info``.

Its ``entry_point`` is one image in numpy, to step by hand, by default on the embedded shapes model, its prompts,
the JPEG-compressibility reward and the shapes presets' steps (``genrl.envs.single``):

    env = gymnasium.make("genrl/LCM-v0")  # or pipeline=..., reward_fn=..., num_steps=..., prompts=[...]
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym

from genrl.envs.base import DenoisingEnv
from genrl.envs.ddpm import DDPMEnv
from genrl.envs.lcm import LCMEnv
from genrl.envs.scoring import score_images
from genrl.envs.single import SingleDDPMEnv, SingleImageEnv, SingleLCMEnv
from genrl.rewards import RewardFn

__all__ = [
    "ENV_IDS",
    "DDPMEnv",
    "DenoisingEnv",
    "LCMEnv",
    "SingleDDPMEnv",
    "SingleImageEnv",
    "SingleLCMEnv",
    "make_env",
    "score_images",
]

ENV_IDS = {"lcm": "genrl/LCM-v0", "ddpm": "genrl/DDPM-v0"}

# make_vec picks the vector entry point whenever one is registered, so make_env builds what it always built.
for _kind, _single, _vector in (("lcm", "SingleLCMEnv", "LCMEnv"), ("ddpm", "SingleDDPMEnv", "DDPMEnv")):
    if ENV_IDS[_kind] not in gym.registry:
        gym.register(ENV_IDS[_kind], entry_point=f"genrl.envs:{_single}", vector_entry_point=f"genrl.envs:{_vector}")


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
