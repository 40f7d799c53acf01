"""Consistency multistep sampling as an MDP (RLCM, paper section 4).

State: the latent at tau_t. Action: the next latent, drawn from N(sqrt(abar_t') f_theta(x_t, t), (1 - abar_t') I).
The reward is computed on the decoded f_theta of the last step, and is zero before.

Final-step semantics: by default diffusers' (``LCMScheduler.step`` adds no noise on the last step, so H steps
give H - 1 stochastic transitions). With ``noise_last_step=True`` the last step is noised too, towards its own
timestep, as in the reference RLCM code; the reward still sees the un-noised f of that step.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import LCMScheduler

from genrl.envs.base import DenoisingEnv, scheduler_timesteps
from genrl.rewards import RewardFn


class LCMEnv(DenoisingEnv):
    def __init__(
        self,
        num_envs: int,
        pipeline: Any,
        reward_fn: RewardFn | None,
        num_steps: int = 8,
        noise_last_step: bool = False,
        resolution: int | None = None,
    ):
        if getattr(pipeline.unet.config, "time_cond_proj_dim", None) is None:
            raise ValueError("the LCM env needs a UNet with a guidance embedding (time_cond_proj_dim); is this an LCM?")
        original_steps = LCMScheduler.from_config(pipeline.scheduler.config).config.original_inference_steps
        # Checked here: diffusers' own error for these talks about img2img strength.
        if not 1 <= num_steps <= original_steps:
            raise ValueError(
                f"LCM horizon must be between 1 and {original_steps} (the scheduler's original_inference_steps, "
                f"the grid it skips along), got {num_steps}"
            )
        # Points of the origin grid (19, 39, ..., 999 for 50 steps of 1000) evenly spaced from the noisy end. Older
        # diffusers, which the RLCM reference code used, took every (50 // H)-th point: the same for H dividing 50.
        timesteps = scheduler_timesteps(
            LCMScheduler, pipeline.scheduler, num_steps, original_inference_steps=original_steps
        )
        # On the last step, diffusers (and the reference code) take the next timestep to be the current one.
        next_timesteps = timesteps[1:] + timesteps[-1:]
        stochastic = [True] * (num_steps - 1) + [noise_last_step]
        super().__init__(num_envs, pipeline, reward_fn, timesteps, next_timesteps, stochastic, resolution)

    def final_latents(self, action: dict[str, torch.Tensor]) -> torch.Tensor:
        return action["pred_original"]
