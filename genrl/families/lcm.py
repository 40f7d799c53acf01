"""The LCM family (``--env lcm``, ``genrl/LCM-v0``): consistency multistep sampling as an MDP (RLCM, paper section 4).

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
from genrl.envs.single import SingleImageEnv
from genrl.errors import GenrlError
from genrl.policy import DenoisingPolicy
from genrl.rewards import RewardFn
from genrl.steps import LogProbReduction, StepDistribution, per_sample

SCHEDULER = LCMScheduler
"""The scheduler whose step ``lcm_step`` mirrors; the pipeline is loaded with it."""
SHAPES_MODEL = "lcm"
"""The embedded shapes model this family samples (``--model shapes``)."""
GUIDANCE_EMBEDDED = True
"""The UNet takes guidance as an embedding (``time_cond_proj_dim``)."""
TINY_MODEL = "tiny-lcm"
"""``--model tiny``: the tiny LCM (``genrl.shapes.tiny``)."""


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------
def lcm_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    next_timestep: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    stochastic: torch.Tensor,
    timestep_scaling: float = 10.0,
    sigma_data: float = 0.5,
) -> StepDistribution:
    """One consistency multistep sampling step from x_t to x_t' (epsilon prediction), as ``LCMScheduler.step``.

        x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        f      = c_out(t) x0_hat + c_skip(t) x_t             (the consistency function)
        x_t'   ~ N(sqrt(abar_t') f, (1 - abar_t') I)          where ``stochastic``
        x_t'   = f                                            otherwise (diffusers' last step)

    ``timestep``, ``next_timestep``: (B,) long; ``stochastic``: (B,) bool. The returned ``pred_original``
    is f, the image the reward sees.
    """
    alpha_t = per_sample(alphas_cumprod[timestep], sample)
    alpha_next = per_sample(alphas_cumprod[next_timestep], sample)
    beta_t = 1 - alpha_t
    beta_next = 1 - alpha_next

    scaled_t = per_sample(timestep * timestep_scaling, sample)
    c_skip = sigma_data**2 / (scaled_t**2 + sigma_data**2)
    c_out = scaled_t / (scaled_t**2 + sigma_data**2) ** 0.5

    pred_original = (sample - beta_t.sqrt() * model_output) / alpha_t.sqrt()
    denoised = c_out * pred_original + c_skip * sample

    noisy = per_sample(stochastic, sample)
    mean = torch.where(noisy, alpha_next.sqrt() * denoised, denoised)
    std = torch.where(noisy, beta_next.sqrt(), torch.zeros_like(beta_next))
    return StepDistribution(mean=mean, std=std, pred_original=denoised)


# --------------------------------------------------------------------------------------------------
# The envs
# --------------------------------------------------------------------------------------------------
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


class SingleLCMEnv(SingleImageEnv):
    """``gymnasium.make("genrl/LCM-v0")``: one image of ``LCMEnv``."""

    kind = "lcm"
    default_num_steps = 4  # the shapes-rlcm presets' horizon


Env = LCMEnv
SingleEnv = SingleLCMEnv


def policy_options(cfg: Any) -> dict[str, Any]:
    """The policy's family-specific keyword arguments from a ``TrainConfig``: none."""
    return {}


ENV_OPTIONS = ("noise_last_step",)


# --------------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------------
class LCMPolicy(DenoisingPolicy):
    """Guidance enters as the w-embedding (``timestep_cond``), w = guidance_scale - 1: one UNet pass per step.
    ``w_embedding`` (1, time_cond_proj_dim) is that embedding, as the LCM pipeline computes it (``make_policy``)."""

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler: Any,
        guidance_scale: float,
        reduction: LogProbReduction,
        w_embedding: torch.Tensor,
    ):
        super().__init__(unet, scheduler, guidance_scale, reduction)
        self.timestep_scaling = float(scheduler.config.get("timestep_scaling", 10.0))
        self.register_buffer("w_embedding", w_embedding.to(unet.device), persistent=False)

    def distribution(self, obs: dict[str, torch.Tensor]) -> StepDistribution:
        latents = obs["latents"]
        cond = self.w_embedding.to(latents).repeat(latents.shape[0], 1)
        eps = self.denoise(latents, obs["timestep"], obs["prompt_embeds"], timestep_cond=cond)
        return lcm_step(
            eps,
            latents,
            obs["timestep"],
            obs["next_timestep"],
            self.alphas_cumprod,
            obs["stochastic"],
            timestep_scaling=self.timestep_scaling,
        )


def make_policy(pipeline: Any, guidance_scale: float, reduction: LogProbReduction, eta: float) -> LCMPolicy:
    """``eta`` is DDIM's; every LCM step has its own fixed std."""
    # The pipeline's own embedding of w = guidance_scale - 1 (computed as its __call__ does, on the CPU).
    w = torch.tensor([guidance_scale - 1.0])
    w_embedding = pipeline.get_guidance_scale_embedding(w, embedding_dim=pipeline.unet.config.time_cond_proj_dim)
    return LCMPolicy(pipeline.unet, pipeline.scheduler, guidance_scale, reduction, w_embedding)


# --------------------------------------------------------------------------------------------------
# What this family asks of the model and the configuration
# --------------------------------------------------------------------------------------------------
def check_pipeline(pipe: Any, model: str) -> None:
    if getattr(pipe.unet.config, "time_cond_proj_dim", None) is None:
        raise GenrlError(
            f"model '{model}' is not a latent consistency model (its UNet has no guidance embedding); "
            "use --env ddpm for a diffusion model, or an LCM checkpoint"
        )


def validate(cfg: Any) -> None:
    """The LCM checks of a ``TrainConfig``."""
    if cfg.sde_window is not None:
        raise GenrlError("--sde-window is a flow option (the lcm env noises its steps its own way); drop it for lcm")
    if cfg.num_steps > 50:
        raise GenrlError(f"--num-steps {cfg.num_steps} is too many for the LCM schedule; use 1 to 50")
    if cfg.num_steps == 1 and not cfg.noise_last_step:
        raise GenrlError(
            "--num-steps 1 leaves no stochastic step with diffusers' deterministic last step; "
            "use --num-steps 2 or more, or --noise-last-step"
        )


def default_grad_steps(num_steps: int) -> int:
    # An LCM step is a short jump that every step shares: DPG can keep the graphs of all of them.
    return num_steps


def evaluation_steps(num_steps: int, quick: bool) -> list[int]:
    """The step counts a benchmark evaluates a trained model at: the LCM's few (quick: its training horizon)."""
    return [num_steps] if quick else sorted({2, 4, 8, num_steps})
