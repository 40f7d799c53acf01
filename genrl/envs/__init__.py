"""Gymnasium environments that turn denoising into an MDP: ``genrl/LCM-v0`` (RLCM) and ``genrl/DDPM-v0`` (DDPO).

env = gymnasium.make_vec("genrl/LCM-v0", num_envs=8, pipeline=pipe, reward_fn=reward, num_steps=8)
"""

import gymnasium as gym

from genrl.envs.base import DenoisingEnv
from genrl.envs.ddpm import DDPMEnv
from genrl.envs.lcm import LCMEnv

__all__ = ["DDPMEnv", "DenoisingEnv", "LCMEnv"]

for _id, _cls in (("genrl/LCM-v0", "LCMEnv"), ("genrl/DDPM-v0", "DDPMEnv")):
    if _id not in gym.registry:
        gym.register(id=_id, vector_entry_point=f"genrl.envs:{_cls}")
