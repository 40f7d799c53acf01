"""Gymnasium environments that turn denoising into an MDP: ``genrl/LCM-v0`` (RLCM), ``genrl/DDPM-v0`` (DDPO) and
``genrl/FLOW-v0`` (Flow-GRPO).

Every family's env is one ``DenoisingEnv``: its sampler (``genrl.samplers``) on the pipeline's model adapter
(``genrl.adapters``). Each id is registered twice over. Its ``vector_entry_point`` is the batched torch env that
training uses:

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

from genrl.envs.base import DenoisingEnv
from genrl.envs.make import make_env, register_envs
from genrl.envs.scoring import score_images
from genrl.envs.single import SingleImageEnv

register_envs()

__all__ = ["DenoisingEnv", "SingleImageEnv", "make_env", "score_images"]
