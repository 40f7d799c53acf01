"""The DDPM family (``--env ddpm``, ``genrl/DDPM-v0``): DDIM sampling with eta > 0 as an MDP (DDPO).

State: the latent at t. Action: x_prev ~ N(mean_t, sigma_t^2 I), every step stochastic (the last one steps to
timestep 0, as in ddpo-pytorch; see ``DDPMEnv``). Classifier-free guidance runs in the policy on a doubled batch; the
env supplies the empty-prompt embedding for it.
The reward is computed on the decoded last latent, and is zero before.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDIMScheduler

from genrl.envs.base import DenoisingEnv, scheduler_timesteps
from genrl.envs.single import SingleImageEnv
from genrl.errors import GenrlError
from genrl.policy import DenoisingPolicy
from genrl.rewards import RewardFn
from genrl.steps import LogProbReduction, StepDistribution, per_sample

SCHEDULER = DDIMScheduler
"""The scheduler whose step ``ddim_step`` mirrors; the pipeline is loaded with it."""
SHAPES_MODEL = "teacher"
"""The embedded shapes model this family samples (``--model shapes``): the diffusion model the LCM came from."""
GUIDANCE_EMBEDDED = False
"""Guidance is classifier-free, by a doubled batch."""
TINY_MODEL = "tiny-sd"
"""``--model tiny``: the tiny Stable Diffusion (``genrl.shapes.tiny``)."""


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------
def ddim_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    prev_timestep: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    final_alpha_cumprod: torch.Tensor,
    eta: float,
) -> StepDistribution:
    """One DDIM step from x_t to x_prev (epsilon prediction), eq. (12) of the DDIM paper.

        sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
        mean    = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_t^2) eps
        x_prev  ~ N(mean, sigma_t^2 I)

    ``prev_timestep`` < 0 means the final step, which lands on ``final_alpha_cumprod`` (as ``DDIMScheduler.step``
    does). Where that is 1 (``set_alpha_to_one=True``) the step is deterministic, std 0, and has no log-prob;
    ``DDPMEnv`` therefore steps to timestep 0 instead, as ddpo-pytorch does, and never passes a negative one for a
    step it trains.
    """
    alpha_t = per_sample(alphas_cumprod[timestep], sample)
    safe_prev = prev_timestep.clamp(min=0)
    alpha_prev = torch.where(prev_timestep >= 0, alphas_cumprod[safe_prev], final_alpha_cumprod.to(alphas_cumprod))
    alpha_prev = per_sample(alpha_prev, sample)
    beta_t = 1 - alpha_t
    beta_prev = 1 - alpha_prev

    pred_original = (sample - beta_t ** (0.5) * model_output) / alpha_t ** (0.5)
    variance = (beta_prev / beta_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance ** (0.5)
    direction = (1 - alpha_prev - std**2) ** (0.5) * model_output
    mean = alpha_prev ** (0.5) * pred_original + direction
    return StepDistribution(mean=mean, std=std, pred_original=pred_original)


# --------------------------------------------------------------------------------------------------
# The envs
# --------------------------------------------------------------------------------------------------
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


class SingleDDPMEnv(SingleImageEnv):
    """``gymnasium.make("genrl/DDPM-v0")``: one image of ``DDPMEnv``."""

    kind = "ddpm"
    default_num_steps = 20  # the shapes-ddpo presets' horizon


Env = DDPMEnv
SingleEnv = SingleDDPMEnv


def policy_options(cfg: Any) -> dict[str, Any]:
    """The policy's family-specific keyword arguments from a ``TrainConfig``: none."""
    return {}


ENV_OPTIONS = ()  # every DDIM step is noised already


# --------------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------------
class DDPMPolicy(DenoisingPolicy):
    """Classifier-free guidance by a doubled batch (unconditional, conditional), then the DDIM step."""

    def __init__(
        self, unet: torch.nn.Module, scheduler: Any, guidance_scale: float, reduction: LogProbReduction, eta: float
    ):
        super().__init__(unet, scheduler, guidance_scale, reduction)
        self.eta = eta
        self.register_buffer("final_alpha_cumprod", scheduler.final_alpha_cumprod.to(unet.device), persistent=False)

    def distribution(self, obs: dict[str, torch.Tensor]) -> StepDistribution:
        latents, t = obs["latents"], obs["timestep"]
        if self.guidance_scale > 1:
            embeds = torch.cat([obs["negative_prompt_embeds"], obs["prompt_embeds"]])
            uncond, cond = self.denoise(torch.cat([latents] * 2), torch.cat([t] * 2), embeds).chunk(2)
            eps = uncond + self.guidance_scale * (cond - uncond)
        else:
            eps = self.denoise(latents, t, obs["prompt_embeds"])
        return ddim_step(eps, latents, t, obs["next_timestep"], self.alphas_cumprod, self.final_alpha_cumprod, self.eta)


def make_policy(pipeline: Any, guidance_scale: float, reduction: LogProbReduction, eta: float) -> DDPMPolicy:
    return DDPMPolicy(pipeline.unet, pipeline.scheduler, guidance_scale, reduction, eta)


# --------------------------------------------------------------------------------------------------
# What this family asks of the model and the configuration
# --------------------------------------------------------------------------------------------------
def check_pipeline(pipe: Any, model: str) -> None:
    """Any epsilon-prediction diffusion UNet samples with DDIM."""


def validate(cfg: Any) -> None:
    """The DDPM checks of a ``TrainConfig``."""
    if cfg.sde_window is not None:
        raise GenrlError("--sde-window is a flow option (the ddpm env noises its steps its own way); drop it for ddpm")
    if cfg.noise_last_step:
        raise GenrlError("--noise-last-step is an LCM option (every DDIM step is noised already); drop it for ddpm")
    if not cfg.eta > 0:
        raise GenrlError(f"--eta {cfg.eta} makes DDIM deterministic, with no policy to train; use --eta > 0")


def default_grad_steps(num_steps: int) -> int:
    # DDIM's 20-50 steps would keep too many graphs: DPG backpropagates through the last one unless told.
    return 1


PAPER_STEPS = 50
"""DDPO samples with 50 DDIM steps."""


def evaluation_steps(num_steps: int, quick: bool) -> list[int]:
    """The step counts a benchmark evaluates a trained model at: fractions of the training horizon, and the paper's
    50 (quick: the horizon and 50, enough for the inference speed-ups)."""
    if quick:
        return sorted({num_steps, PAPER_STEPS})
    return sorted({max(2, num_steps // 4), max(2, num_steps // 2), num_steps, PAPER_STEPS})
