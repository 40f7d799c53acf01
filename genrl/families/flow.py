"""The flow family (``--env flow``, ``genrl/FLOW-v0``): flow-matching sampling as an MDP (Flow-GRPO, DanceGRPO).

A rectified-flow model (SD3, FLUX) predicts the velocity v = eps - x0 of the path x_sigma = (1 - sigma) x0 + sigma eps,
which runs from data at sigma = 0 to noise at sigma = 1. diffusers' ``FlowMatchEulerDiscreteScheduler`` samples it
with the deterministic Euler step x_next = x + (sigma_next - sigma) v. That step has no log-prob, so Flow-GRPO turns
the ODE into a reverse-time SDE with the same marginals (it adds noise and corrects the drift by the score), and takes
its Euler-Maruyama step as the policy: a Gaussian over the next latent, like DDPO's DDIM step.

State: the latent at sigma. Action: x_next ~ N(mean, std^2 I) of ``flow_step``; every step is stochastic, the last
one (to sigma = 0) too, as in Flow-GRPO. The reward is computed on the decoded last latent, and is zero before.
Classifier-free guidance runs in the policy on a doubled batch, as the SD3 pipeline does; the env supplies the empty
prompt's embedding for it.

Two things differ from the UNet families' observations (``genrl.envs.base``), so that the trajectory buffer, the
rollout and the algorithms carry them unchanged:

- ``timestep`` and ``next_timestep`` are float32 sigmas in [0, 1], exactly the scheduler's ``sigmas`` (the last step's
  ``next_timestep`` is the terminal 0). The transformer is conditioned on sigma * num_train_timesteps, which is how
  the scheduler computes its ``timesteps``, bit for bit.
- ``prompt_embeds`` (and ``negative_prompt_embeds``) hold SD3's two text conditionings in one tensor: the token
  embeddings (L, D) of ``StableDiffusion3Pipeline.encode_prompt``, then one more row that holds its pooled embedding
  (P <= D wide), zero-padded to D (``pack_text``, ``unpack_text``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Literal

import gymnasium as gym
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

from genrl.denoiser import denoiser
from genrl.envs.base import DenoisingEnv
from genrl.envs.single import SingleImageEnv
from genrl.errors import GenrlError
from genrl.policy import DenoisingPolicy
from genrl.rewards import RewardFn
from genrl.steps import LogProbReduction, StepDistribution, per_sample

SCHEDULER = FlowMatchEulerDiscreteScheduler
"""The scheduler whose step ``flow_step`` mirrors with ``noise_level=0``; the pipeline is loaded with it."""
SHAPES_MODEL = "flow"
"""The embedded shapes model this family samples (``--model shapes``), built by ``genrl.shapes.pretrain flow``."""
SHAPES_MISSING = (
    "the embedded shapes flow model has not been trained yet: build it with `python -m genrl.shapes.pretrain flow` "
    "(it needs the shipped teacher only), or use --model tiny, or a Stable Diffusion 3 pipeline folder or hub id"
)
"""The error for ``--model shapes --env flow`` while that model is missing (``genrl.models.resolve_model``)."""
GUIDANCE_EMBEDDED = False
"""Guidance is classifier-free, by a doubled batch."""
TINY_MODEL = "tiny-sd3"
"""``--model tiny``: a tiny random-weight Stable Diffusion 3 (``genrl.shapes.tiny``)."""
FLOW_GRPO_LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)
"""Flow-GRPO's LoRA layers on SD3: both streams of every joint attention, the image's (to_*) and the text's (add_*,
to_add_out). genrl's default (to_q, to_k, to_v, to_out.0) is the image stream's alone; --lora-target-modules takes
these."""
MAX_SEQUENCE_LENGTH = 256
"""T5 tokens of a prompt: ``StableDiffusion3Pipeline``'s default ``max_sequence_length``."""


def t5_tokens(pipeline: Any) -> int:
    """The T5 tokens a prompt gets: diffusers' default ``max_sequence_length``, or fewer where the T5 tokenizer takes
    fewer (its ``model_max_length``: the embedded shapes model's T5 returns zeros, and the model reads one zero token
    as it reads 256), or none without a T5 encoder."""
    if getattr(pipeline, "text_encoder_3", None) is None:
        return 0
    return min(MAX_SEQUENCE_LENGTH, pipeline.tokenizer_3.model_max_length)


@contextlib.contextmanager
def _quieter(logger: logging.Logger):
    """``logger`` passes errors only, for the duration."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


NoiseMode = Literal["flow_grpo", "constant"]
"""How the SDE's noise scale g depends on sigma: Flow-GRPO's a sqrt(sigma / (1 - sigma)), or DanceGRPO's constant a."""

FLOW_GRPO_NOISE_LEVEL = 0.7
"""Flow-GRPO's default a (``config.sample.noise_level`` in its config/base.py)."""
DANCE_GRPO_NOISE_LEVEL = 0.3
"""DanceGRPO's default a (its ``--eta``, for FLUX and Wan)."""


NOISE_MODES = ("flow_grpo", "constant")

MAX_NOISE_LEVEL = math.sqrt(2)
"""The noise level a at which ``flow_step``'s mean keeps none of the latent: its factor on x is 1 - a^2/2 on the
step from sigma = 1 ("flow_grpo", where Flow-GRPO divides by 1 - sigma_next) and on the step to sigma = 0
("constant"); past it the factor is negative, and the chain flips and grows step by step."""


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------
def flow_step(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    noise_level: float | torch.Tensor = FLOW_GRPO_NOISE_LEVEL,
    noise_mode: NoiseMode = "flow_grpo",
) -> StepDistribution:
    """One Euler-Maruyama step of the flow SDE from x at ``sigma`` to x_next at ``sigma_next`` (velocity prediction).

        dt      = sigma_next - sigma                                              (< 0: towards the data)
        g       = a sqrt(sigma / (1 - sigma))  ("flow_grpo")   or   a  ("constant", DanceGRPO)
        mean    = x (1 + g^2 dt / (2 sigma)) + v (1 + g^2 (1 - sigma) / (2 sigma)) dt
        x_next  ~ N(mean, g^2 |dt| I)

    The mean is the Euler step x + v dt plus the score correction -g^2/2 score(x) dt, with the marginal's score
    written through the model's noise estimate: score(x) = -eps_hat / sigma, eps_hat = x + (1 - sigma) v (DanceGRPO
    writes it as -(x - (1 - sigma) x0_hat) / sigma^2, x0_hat = x - sigma v: the same). For any g the SDE has the ODE's
    marginals in continuous time; a = 0 is diffusers' Euler step exactly.

    Euler-Maruyama keeps them to first order in the step, with one exception: Flow-GRPO's g^2 / sigma = a^2 / (1 -
    sigma) diverges at sigma = 1, and on the first few steps of a schedule from pure noise the drift's factor is O(1)
    however fine the grid (a^2 / 2 on the first, a^2 / (2 j) j steps later on an even grid). Those steps
    over-disperse the latent, by about a^4 / 4 of variance on the first (0.06 for a = 0.7, whatever the data), and
    the excess fades only slowly on the way to the data (tests/test_flow_steps.py).

    ``sigma``, ``sigma_next``: (B,) (or 0-d), in [0, 1] with ``sigma`` > 0; ``noise_level``: a >= 0, one for all or
    (B,), one a sample. The maths run in fp32 whatever the model's dtype, as Flow-GRPO's do: bf16 would round away
    the small corrections to factors of 1.
    ``pred_original`` is x0_hat, in fp32. The log-prob of a next latent is ``genrl.steps.gaussian_log_prob`` of the
    returned mean and std, and ``StepDistribution.sample(noise)`` draws one from given noise.
    """
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be 'flow_grpo' or 'constant', got {noise_mode!r}")
    model_output = model_output.float()
    sample = sample.float()
    sigma = per_sample(sigma.float(), sample)
    sigma_next = per_sample(sigma_next.float(), sample)
    if isinstance(noise_level, torch.Tensor):
        noise_level = per_sample(noise_level.float(), sample)
    dt = sigma_next - sigma

    if noise_mode == "flow_grpo":
        # g^2 = a^2 sigma / (1 - sigma) is infinite at sigma = 1. Flow-GRPO divides there by 1 - sigmas[1] instead:
        # sigmas[1] is sigma_next of the one step that starts at sigma = 1 (the first, on a schedule from pure noise).
        std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_next, sigma))) * noise_level
    else:
        std_dev_t = noise_level * torch.ones_like(sigma)

    # Flow-GRPO's operation order, so that a = 0 leaves x + v dt bit for bit (the factors are then exactly 1).
    mean = (
        sample * (1 + std_dev_t**2 / (2 * sigma) * dt)
        + model_output * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    )
    std = std_dev_t * torch.sqrt(-1 * dt)
    pred_original = sample - sigma * model_output
    return StepDistribution(mean=mean, std=std, pred_original=pred_original)


# --------------------------------------------------------------------------------------------------
# The text conditioning, in one tensor
# --------------------------------------------------------------------------------------------------
def pack_text(prompt_embeds: torch.Tensor, pooled_prompt_embeds: torch.Tensor) -> torch.Tensor:
    """(B, L, D) token embeddings and (B, P) pooled embeddings, P <= D, as one (B, L + 1, D) tensor: the pooled
    embedding, zero-padded to D, is the last row. The buffer stores it once per trajectory, as it stores the
    UNet families' one embedding."""
    width, pooled = prompt_embeds.shape[-1], pooled_prompt_embeds.shape[-1]
    row = torch.nn.functional.pad(pooled_prompt_embeds, (0, width - pooled)).to(prompt_embeds.dtype)
    return torch.cat([prompt_embeds, row[:, None]], dim=1)


def unpack_text(packed: torch.Tensor, pooled_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``pack_text``'s inverse: the token embeddings (B, L, D) and the pooled embeddings (B, ``pooled_dim``)."""
    return packed[:, :-1], packed[:, -1, :pooled_dim]


# --------------------------------------------------------------------------------------------------
# The envs
# --------------------------------------------------------------------------------------------------
def flow_sigmas(scheduler: Any, num_steps: int, latent_size: int, patch_size: int) -> list[float]:
    """The ``num_steps`` + 1 sigmas of ``FlowMatchEulerDiscreteScheduler.set_timesteps(num_steps)`` on
    ``scheduler``'s config, ending on the terminal 0, as float32 values. Where the config shifts by resolution
    (``use_dynamic_shifting``, FLUX and SD3.5's variants), ``mu`` comes from the image's sequence length as the SD3
    pipeline computes it. Built on a fresh scheduler: the pipeline's own stays as it was."""
    fresh = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    options: dict[str, float] = {}
    if fresh.config.get("use_dynamic_shifting", False):
        seq_len = (latent_size // patch_size) ** 2
        options["mu"] = calculate_shift(
            seq_len,
            fresh.config.get("base_image_seq_len", 256),
            fresh.config.get("max_image_seq_len", 4096),
            fresh.config.get("base_shift", 0.5),
            fresh.config.get("max_shift", 1.16),
        )
    fresh.set_timesteps(num_steps, **options)
    return [float(sigma) for sigma in fresh.sigmas]  # a Python float holds a float32 exactly


class FlowEnv(DenoisingEnv):
    """SD3-style flow matching: the schedule is the scheduler's sigmas (the module docstring), the text is
    ``StableDiffusion3Pipeline.encode_prompt``'s, and the VAE decodes with SD3's scale and shift."""

    denoiser_kind = "transformer"
    timestep_dtype = torch.float32

    def __init__(
        self,
        num_envs: int,
        pipeline: Any,
        reward_fn: RewardFn | None,
        num_steps: int = 10,
        resolution: int | None = None,
        sde_window: tuple[int, int] | None = None,
    ):
        if num_steps < 1:
            raise ValueError(f"flow steps must be at least 1, got {num_steps}")
        try:
            start, end = window(sde_window, num_steps)
        except ValueError as exc:
            raise ValueError(f"sde_window {exc}") from None
        net = denoiser(pipeline)
        pooled, width = net.config.pooled_projection_dim, net.config.joint_attention_dim
        if pooled > width:  # pack_text puts the pooled embedding in a row of the token embeddings
            raise ValueError(f"the pooled text embedding ({pooled} wide) is wider than the token embeddings ({width})")
        vae_scale = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
        latent_size = (resolution or net.config.sample_size * vae_scale) // vae_scale
        sigmas = flow_sigmas(pipeline.scheduler, num_steps, latent_size, net.config.patch_size)
        stochastic = [start <= i < end for i in range(num_steps)]  # the SDE's steps; the others take the ODE's
        super().__init__(num_envs, pipeline, reward_fn, sigmas[:-1], sigmas[1:], stochastic, resolution)

    def latent_multiple(self, net: torch.nn.Module) -> int:
        """The transformer cuts the latent into patches."""
        return net.config.patch_size

    def largest_latent(self, net: torch.nn.Module) -> int | None:
        """SD3's patch embedding crops a position embedding of ``pos_embed_max_size`` patches a side (diffusers
        raises past it); without one it computes positions for any size."""
        patches = net.config.get("pos_embed_max_size")
        return None if patches is None else patches * net.config.patch_size

    def text_shape(self) -> tuple[int, int]:
        """CLIP's tokens, T5's, and the pooled row (``pack_text``), as wide as the transformer's joint attention."""
        net = denoiser(self.pipeline)
        return (self.pipeline.tokenizer_max_length + t5_tokens(self.pipeline) + 1, net.config.joint_attention_dim)

    def timestep_space(self) -> gym.Space:
        """Sigmas, from 1 (noise) to 0 (data)."""
        return gym.spaces.Box(0.0, 1.0, (), dtype=torch.empty((), dtype=self.timestep_dtype).numpy().dtype)

    def init_noise_sigma(self) -> float:
        """The path starts from unit Gaussian noise at sigma = 1 (the SD3 pipeline does not scale it)."""
        return 1.0

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The pipeline's own text encoding (both CLIPs, T5), packed (``pack_text``)."""
        tokens = t5_tokens(self.pipeline)
        # A T5 tokenizer that takes fewer tokens than diffusers' default cuts every prompt by design: the pipeline's
        # warning that prints each cut-off part (a screenful per batch) says nothing then.
        by_design = tokens < MAX_SEQUENCE_LENGTH
        with _quieter(logging.getLogger(type(self.pipeline).__module__)) if by_design else contextlib.nullcontext():
            embeds, _, pooled, _ = self.pipeline.encode_prompt(
                prompt=prompts,
                prompt_2=None,
                prompt_3=None,
                device=self.device,
                do_classifier_free_guidance=False,
                max_sequence_length=tokens,
            )
        return pack_text(embeds, pooled).to(self.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, 3, H, W) in [0, 1], undoing SD3's VAE scale and shift as its pipeline does.
        Differentiable."""
        vae = self.pipeline.vae
        images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor).sample
        images = images.to(torch.promote_types(images.dtype, torch.float32))
        return (images / 2 + 0.5).clamp(0, 1)


class SingleFlowEnv(SingleImageEnv):
    """``gymnasium.make("genrl/FLOW-v0")``: one image of ``FlowEnv``."""

    kind = "flow"
    default_num_steps = 10  # Flow-GRPO's training horizon


Env = FlowEnv
SingleEnv = SingleFlowEnv


ENV_OPTIONS = ("sde_window",)


def window(sde_window: tuple[int, int] | None, num_steps: int) -> tuple[int, int]:
    """The steps [start, end) that take the SDE (default: all); ``ValueError`` for a window outside the steps."""
    start, end = sde_window or (0, num_steps)
    if not 0 <= start < end <= num_steps:
        raise ValueError(
            f"{start} {end} is not a window of the {num_steps} steps: pass START < END, from 0 to {num_steps}"
        )
    return start, end


# --------------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------------
class FlowPolicy(DenoisingPolicy):
    """The transformer's velocity, with classifier-free guidance by a doubled batch (unconditional, conditional) as
    the SD3 pipeline computes it, then the SDE step ``flow_step`` with noise level ``noise_level`` (a)."""

    def __init__(
        self,
        transformer: torch.nn.Module,
        scheduler: Any,
        guidance_scale: float,
        reduction: LogProbReduction,
        noise_level: float,
        noise_mode: NoiseMode,
    ):
        super().__init__(transformer, scheduler, guidance_scale, reduction)
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be 'flow_grpo' or 'constant', got {noise_mode!r}")
        self.noise_level, self.noise_mode = noise_level, noise_mode
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.pooled_dim = transformer.config.pooled_projection_dim

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        """The transformer's prediction at ``sigma``: conditioned on sigma * num_train_timesteps, the scheduler's own
        timestep (``FlowMatchEulerDiscreteScheduler.set_timesteps`` multiplies the same float32 values)."""
        embeds, pooled = unpack_text(packed, self.pooled_dim)
        timestep = sigma * self.num_train_timesteps
        return self.denoise(
            hidden_states=latents, timestep=timestep, encoder_hidden_states=embeds, pooled_projections=pooled
        )

    def distribution(self, obs: dict[str, torch.Tensor]) -> StepDistribution:
        latents, sigma = obs["latents"], obs["timestep"]
        if self.guidance_scale > 1:
            packed = torch.cat([obs["negative_prompt_embeds"], obs["prompt_embeds"]])
            uncond, cond = self.velocity(torch.cat([latents] * 2), torch.cat([sigma] * 2), packed).chunk(2)
            velocity = uncond + self.guidance_scale * (cond - uncond)
        else:
            velocity = self.velocity(latents, sigma, obs["prompt_embeds"])
        # Outside the SDE window (``sde_window``) a step is the ODE's: noise level 0, diffusers' Euler step exactly.
        noise_level = torch.where(obs["stochastic"], self.noise_level, 0.0)
        return flow_step(velocity, latents, sigma, obs["next_timestep"], noise_level, self.noise_mode)


def make_policy(
    pipeline: Any,
    guidance_scale: float,
    reduction: LogProbReduction,
    eta: float,
    noise_level: float = FLOW_GRPO_NOISE_LEVEL,
    noise_mode: NoiseMode = "flow_grpo",
) -> FlowPolicy:
    """``eta`` is DDIM's; the flow SDE's noise is ``noise_level`` a and ``noise_mode`` (``flow_step``)."""
    return FlowPolicy(pipeline.transformer, pipeline.scheduler, guidance_scale, reduction, noise_level, noise_mode)


def policy_options(cfg: Any) -> dict[str, Any]:
    """The policy's family-specific keyword arguments from a ``TrainConfig``: the SDE's noise level and mode."""
    return {"noise_level": cfg.noise_level, "noise_mode": cfg.noise_mode}


# --------------------------------------------------------------------------------------------------
# What this family asks of the model and the configuration
# --------------------------------------------------------------------------------------------------
def check_pipeline(pipe: Any, model: str) -> None:
    """A Stable Diffusion 3 style pipeline: a transformer with pooled text projections, and SD3's prompt encoding."""
    net = getattr(pipe, "transformer", None)
    if net is None or not hasattr(pipe, "encode_prompt") or "pooled_projection_dim" not in net.config:
        raise GenrlError(
            f"model '{model}' is not a Stable Diffusion 3 style flow-matching pipeline (a transformer with pooled "
            "text projections); use --env lcm or --env ddpm for a UNet model, or an SD3 checkpoint"
        )


def validate(cfg: Any) -> None:
    """The flow checks of a ``TrainConfig``."""
    try:
        window(cfg.sde_window, cfg.num_steps)
    except ValueError as exc:
        raise GenrlError(f"--sde-window {exc} (--num-steps)") from None
    if cfg.noise_last_step:
        raise GenrlError("--noise-last-step is an LCM option (every flow step is noised already); drop it for flow")
    if not cfg.noise_level > 0:
        raise GenrlError(
            f"--noise-level {cfg.noise_level} makes the flow step the deterministic Euler step, with no policy to "
            f"train; use --noise-level > 0 (Flow-GRPO: {FLOW_GRPO_NOISE_LEVEL})"
        )
    if cfg.noise_level >= MAX_NOISE_LEVEL:
        raise GenrlError(
            f"--noise-level {cfg.noise_level} is too large: the flow step's mean keeps 1 - a^2/2 of the latent on "
            "the first step (the last with --noise-mode constant), none at a = sqrt(2) and its negative past it, "
            f"so the samples run away to NaN; use a noise level under {MAX_NOISE_LEVEL:.2f} (Flow-GRPO: "
            f"{FLOW_GRPO_NOISE_LEVEL})"
        )


def default_grad_steps(num_steps: int) -> int:
    # As for DDIM: a flow step is one of 10-40, and DPG backpropagates through the last one unless told.
    return 1


PAPER_STEPS = 40
"""Flow-GRPO evaluates with 40 steps (it trains with 10)."""


def evaluation_steps(num_steps: int, quick: bool) -> list[int]:
    """The step counts a benchmark evaluates a trained model at: fractions of the training horizon, and Flow-GRPO's
    40 (quick: the horizon and 40)."""
    if quick:
        return sorted({num_steps, PAPER_STEPS})
    return sorted({max(2, num_steps // 4), max(2, num_steps // 2), num_steps, PAPER_STEPS})
