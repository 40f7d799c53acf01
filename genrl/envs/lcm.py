"""Consistency multistep sampling as an MDP (RLCM, paper section 4).

State: the latent at tau_t. Action: the next latent, drawn from N(sqrt(abar_t') f_theta(x_t, t), (1 - abar_t') I).
The reward is computed on the decoded f_theta of the last step, and is zero before.

Final-step semantics: by default diffusers' (``LCMScheduler.step`` adds no noise on the last step, so H steps
give H - 1 stochastic transitions). With ``noise_last_step=True`` the last step is noised too, towards its own
timestep, as in the reference RLCM code; the reward still sees the un-noised f of that step.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import torch

from genrl.envs.base import DenoisingEnv
from genrl.rewards import RewardFn
from genrl.steps import lcm_timesteps


class LCMEnv(DenoisingEnv):
    def __init__(
        self,
        num_envs: int,
        pipeline: Any,
        reward_fn: RewardFn,
        num_steps: int = 8,
        noise_last_step: bool = False,
        resolution: int | None = None,
        reward_executor: Executor | None = None,
    ):
        config = pipeline.scheduler.config
        if getattr(pipeline.unet.config, "time_cond_proj_dim", None) is None:
            raise ValueError("the LCM env needs a UNet with a guidance embedding (time_cond_proj_dim); is this an LCM?")
        timesteps = lcm_timesteps(num_steps, config.original_inference_steps, config.num_train_timesteps)
        # On the last step, diffusers (and the reference code) take the next timestep to be the current one.
        next_timesteps = timesteps[1:] + timesteps[-1:]
        stochastic = [True] * (num_steps - 1) + [noise_last_step]
        super().__init__(
            num_envs, pipeline, reward_fn, timesteps, next_timesteps, stochastic, resolution, reward_executor
        )

    def final_latents(self, action: dict[str, torch.Tensor]) -> torch.Tensor:
        return action["pred_original"]
