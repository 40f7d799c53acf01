"""DDIM sampling with eta > 0 as an MDP (DDPO).

State: the latent at t. Action: x_prev ~ N(mean_t, sigma_t^2 I), every step stochastic (the last one steps to
timestep 0, as in ddpo-pytorch; see below). Classifier-free guidance runs in the policy on a doubled batch; the env
supplies the empty-prompt embedding for it.
The reward is computed on the decoded last latent, and is zero before.
"""

from __future__ import annotations

from typing import Any

from diffusers import DDIMScheduler

from genrl.envs.base import DenoisingEnv, scheduler_timesteps
from genrl.rewards import RewardFn


class DDPMEnv(DenoisingEnv):
    def __init__(
        self,
        num_envs: int,
        pipeline: Any,
        reward_fn: RewardFn | None,
        num_steps: int = 50,
        resolution: int | None = None,
    ):
        num_train_timesteps = pipeline.scheduler.config.num_train_timesteps
        if not 1 <= num_steps <= num_train_timesteps:
            raise ValueError(f"DDIM steps must be between 1 and {num_train_timesteps}, got {num_steps}")
        # The scheduler's own schedule, with its timestep_spacing and steps_offset (SD 1.5: "leading", 1).
        timesteps = scheduler_timesteps(DDIMScheduler, pipeline.scheduler, num_steps)
        # Each step goes back by T // num_steps, as DDIMScheduler.step computes its previous timestep.
        ratio = num_train_timesteps // num_steps
        # The last step, as ddpo-pytorch takes it (diffusers_patch/ddim_with_logprob.py clamps the previous timestep
        # to [0, num_train_timesteps - 1]): it lands on alphas_cumprod[0] and keeps a positive std. diffusers' own
        # step lands on final_alpha_cumprod instead, which is 1 where the scheduler sets set_alpha_to_one (its
        # default where a config omits the key): std 0, and a step trained as stochastic would get a NaN log-prob.
        # A schedule that ends on t = 0 (steps_offset 0, or "linspace" spacing) has no earlier timestep to step to:
        # that step keeps diffusers' final alpha (next timestep -1, "past 0") and is deterministic, outside the
        # policy, like LCM's last step.
        next_timesteps = [max(t - ratio, 0) if t > 0 else -1 for t in timesteps]
        stochastic = [t > 0 for t in timesteps]
        if not any(stochastic):
            raise ValueError(
                f"{num_steps} DDIM step(s) from t = 0 (where the scheduler's schedule ends) leave no stochastic step "
                'to train; use more steps or a scheduler with steps_offset 1 and "leading" spacing'
            )
        super().__init__(num_envs, pipeline, reward_fn, timesteps, next_timesteps, stochastic, resolution)
