"""DDIM sampling with eta > 0 as an MDP (DDPO).

State: the latent at t. Action: x_prev ~ N(mean_t, sigma_t^2 I), every step stochastic. Classifier-free
guidance runs in the policy on a doubled batch; the env supplies the empty-prompt embedding for it.
The reward is computed on the decoded last latent, and is zero before.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from genrl.envs.base import DenoisingEnv
from genrl.rewards import RewardFn
from genrl.steps import ddim_timesteps


class DDPMEnv(DenoisingEnv):
    def __init__(
        self,
        num_envs: int,
        pipeline: Any,
        reward_fn: RewardFn,
        num_steps: int = 50,
        resolution: int | None = None,
        reward_executor: Executor | None = None,
    ):
        config = pipeline.scheduler.config
        timesteps = ddim_timesteps(num_steps, config.num_train_timesteps, config.get("steps_offset", 0))
        ratio = config.num_train_timesteps // num_steps
        next_timesteps = [t - ratio for t in timesteps]  # negative on the last step: the final alpha
        super().__init__(
            num_envs, pipeline, reward_fn, timesteps, next_timesteps, [True] * num_steps, resolution, reward_executor
        )
