"""DDIM sampling with eta > 0 as an MDP (DDPO).

State: the latent at t. Action: x_prev ~ N(mean_t, sigma_t^2 I), every step stochastic (the last one steps to
timestep 0, as in ddpo-pytorch; see below). Classifier-free guidance runs in the policy on a doubled batch; the env
supplies the empty-prompt embedding for it.
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
        # The last step, as ddpo-pytorch takes it (diffusers_patch/ddim_with_logprob.py clamps the previous timestep
        # to [0, num_train_timesteps - 1]): it lands on alphas_cumprod[0] and keeps a positive std. diffusers' own
        # step lands on final_alpha_cumprod instead, which is 1 where the scheduler sets set_alpha_to_one (its
        # default where a config omits the key): std 0, and a step trained as stochastic would get a NaN log-prob.
        # A schedule that ends on t = 0 (steps_offset 0) has no earlier timestep to step to: that step keeps
        # diffusers' final alpha and is deterministic, outside the policy, like LCM's last step.
        next_timesteps = [max(t - ratio, 0) if t > 0 else t - ratio for t in timesteps]
        stochastic = [t > 0 for t in timesteps]
        if not any(stochastic):
            raise ValueError(
                f"{num_steps} DDIM step(s) from t = 0 (steps_offset 0) leave no stochastic step to train; "
                "use more steps or a scheduler with steps_offset 1"
            )
        super().__init__(
            num_envs, pipeline, reward_fn, timesteps, next_timesteps, stochastic, resolution, reward_executor
        )
