"""What the LCM and DDPM environments share: prompts in, latents through, decoded images scored at the end.

An environment is a Gymnasium vector env of B sub-envs, one per image. Observations are dicts of torch tensors on
the model's device; ``observation_space`` and ``action_space`` (and their ``single_`` versions, one row) declare
every key, shape and dtype, and ``{k: v.cpu().numpy()}`` of what ``reset`` and ``step`` return lies in them
(tests/test_envs.py). ``genrl.envs.single`` wraps a one-image env into the numpy ``gymnasium.Env`` that
``gymnasium.make`` returns. The env owns the timestep schedule, the frozen text encoder and VAE, and the
reward call; the trainable denoiser lives in the policy.

Observation keys, the same on every step and after the last:

- ``latents`` (B, C, h, w), the UNet's dtype, at least fp32: the current state.
- ``timestep``, ``next_timestep`` (B,) int64: where this step goes from and to. -1 stands for "past timestep 0",
  where DDIM's last step lands on ``final_alpha_cumprod`` (a schedule that ends on t = 0). The flow family's are
  float32 sigmas instead (``genrl.families.flow``).
- ``stochastic`` (B,) bool: False where the step is deterministic and carries no log-prob.
- ``prompt_embeds``, ``negative_prompt_embeds`` (B, L, D), the latents' dtype: the prompts' and the empty
  prompt's text embeddings (the flow family's carry SD3's pooled embedding as a last row).

The observation after the last step (``terminated`` all True) has no step left: ``timestep`` and
``next_timestep`` both hold the schedule's end (the last step's ``next_timestep``) and ``stochastic`` is False.

Action keys: ``next_latents`` (the next state) and ``pred_original`` (the model's clean-image estimate, which
the LCM env decodes at the end; the DDPM env decodes ``next_latents``), both (B, C, h, w): the action of
``DenoisingPolicy.sample_action``. Each is a float torch tensor, taken as it is (a reparameterised rollout
backpropagates through it), or a float numpy array such as ``action_space.sample()`` draws, copied onto the env's
device and dtype. Other keys, shapes or types (integer or bool tensors too), and NaN or infinite values, are a
one-line ``ValueError``.

Rewards are (B,) float. Before the last step they are zero and ``info`` is empty. At the last step the env decodes
the final latents, under the caller's grad mode (a reparameterised rollout keeps the graph through the decode and
the reward), and then:

- with a ``reward_fn``, it scores them with the episode's prompts and metadata (``genrl.envs.scoring``): the
  rewards, and ``info`` = ``images`` (B, 3, H, W) in [0, 1], ``reward_parts`` (a composite reward's parts, each
  (B,)) and ``reward_time_s``;
- with ``reward_fn=None``, it does not: the rewards are NaN (not yet known, never to be mistaken for a score) and
  ``info`` = ``images`` only, for the caller to score with the same ``score_images`` (say in a background thread
  while it samples on, as ``genrl.rollout`` does).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from genrl.denoiser import denoiser
from genrl.envs.actions import as_action_tensors
from genrl.envs.scoring import score_images
from genrl.noise import noise_rows
from genrl.rewards import CheckedReward, RewardFn


def scheduler_timesteps(scheduler_cls: type, scheduler: Any, num_steps: int, **kwargs: Any) -> list[int]:
    """The timesteps ``scheduler_cls.set_timesteps(num_steps, **kwargs)`` gives on ``scheduler``'s config.

    ``set_timesteps`` changes the scheduler it runs on, so it runs on a fresh one: the pipeline's scheduler stays as
    it was. Building it as ``scheduler_cls`` also gives the schedule of the step the env's maths mirror whatever
    scheduler the pipeline was saved with.
    """
    fresh = scheduler_cls.from_config(scheduler.config)
    fresh.set_timesteps(num_steps, **kwargs)
    return [int(t) for t in fresh.timesteps]


class DenoisingEnv(gym.vector.VectorEnv):
    metadata = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}

    def __init__(
        self,
        num_envs: int,
        pipeline: Any,
        reward_fn: RewardFn | None,
        timesteps: list[int],
        next_timesteps: list[int],
        stochastic: list[bool],
        resolution: int | None = None,
    ):
        self.num_envs = num_envs
        self.pipeline = pipeline
        if reward_fn is not None and not isinstance(reward_fn, CheckedReward):
            reward_fn = CheckedReward(reward_fn, "reward")
        self.reward_fn = reward_fn
        num_train_timesteps = pipeline.scheduler.config.num_train_timesteps
        if not all(0 <= t < num_train_timesteps for t in timesteps):
            raise ValueError(
                f"the {len(timesteps)}-step schedule {timesteps} leaves the model's timesteps 0 to "
                f"{num_train_timesteps - 1}; use fewer steps"
            )
        self.timesteps, self.next_timesteps, self.stochastic = timesteps, next_timesteps, stochastic
        self.num_steps = len(timesteps)
        net = denoiser(pipeline)  # the UNet, or a flow model's transformer
        self.device = net.device
        # The state is at least fp32 whatever the weights' dtype: the step maths and log-probs read it
        # (genrl.precision); the UNet and the VAE take it under autocast or cast to their own dtype.
        self.dtype = torch.promote_types(net.dtype, torch.float32)
        vae_scale = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
        self.resolution = resolution or net.config.sample_size * vae_scale
        multiple = vae_scale * self.latent_multiple(net)
        if self.resolution < 1 or self.resolution % multiple:
            raise ValueError(
                f"resolution {self.resolution} must be a positive multiple of {multiple} for this model "
                f"(its VAE and {self.denoiser_kind} downsample by that much); e.g. {net.config.sample_size * vae_scale}"
            )
        largest = self.largest_latent(net)
        if largest is not None and self.resolution > largest * vae_scale:
            # Checked here, before any latent is drawn: diffusers would raise only in the first forward pass.
            most = largest * vae_scale
            raise ValueError(
                f"resolution {self.resolution} is over the {self.denoiser_kind}'s position embedding, which takes at "
                f"most {most} px for this model; pass a resolution up to {most}, a multiple of {multiple}"
            )
        self.latent_shape = (
            net.config.in_channels,
            self.resolution // vae_scale,
            self.resolution // vae_scale,
        )
        self._declare_spaces()

        self._generator = torch.Generator(device="cpu")
        self._negative_embeds = None
        self._step = None
        self._latents = None

    denoiser_kind = "UNet"
    """What the denoiser is, for messages."""
    timestep_dtype = torch.long
    """The dtype of ``timestep`` and ``next_timestep``: the schedule's integer timesteps."""

    def init_noise_sigma(self) -> float:
        """The scale of the initial noise: the scheduler's."""
        return self.pipeline.scheduler.init_noise_sigma

    def latent_multiple(self, net: torch.nn.Module) -> int:
        """How many times the denoiser ``net`` shrinks the latent: the UNet halves it once per down block but the
        last. (The VAE's factor comes on top.)"""
        return 2 ** (len(net.config.block_out_channels) - 1)

    def largest_latent(self, net: torch.nn.Module) -> int | None:
        """The largest latent side the denoiser ``net`` takes; None for any (a UNet is convolutional)."""
        return None

    def text_shape(self) -> tuple[int, int]:
        """One prompt's text embedding: (tokens, width)."""
        return (self.pipeline.tokenizer.model_max_length, self.pipeline.text_encoder.config.hidden_size)

    def timestep_space(self) -> gym.Space:
        """The space of ``timestep`` and ``next_timestep``: -1 to the last training timestep, -1 being "past
        timestep 0" (a DDIM schedule that ends on t = 0)."""
        return gym.spaces.Discrete(self.pipeline.scheduler.config.num_train_timesteps + 1, start=-1)

    def _declare_spaces(self) -> None:
        """The spaces of one sub-env's observation and action (the module docstring), and of the batch."""
        dtype = torch.empty((), dtype=self.dtype).numpy().dtype
        latents = gym.spaces.Box(-np.inf, np.inf, self.latent_shape, dtype)
        embeds = gym.spaces.Box(-np.inf, np.inf, self.text_shape(), dtype)
        timestep = self.timestep_space()
        self.single_observation_space = gym.spaces.Dict(
            latents=latents,
            timestep=timestep,
            next_timestep=timestep,
            stochastic=gym.spaces.Box(0, 1, (), np.bool_),
            prompt_embeds=embeds,
            negative_prompt_embeds=embeds,
        )
        self.single_action_space = gym.spaces.Dict(next_latents=latents, pred_original=latents)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        tok = self.pipeline.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.pipeline.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.pipeline.text_encoder(tok.input_ids.to(self.device))[0].to(self.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, 3, H, W) in [0, 1]. Differentiable; wrap in no_grad where no gradient is wanted."""
        vae = self.pipeline.vae
        images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        images = images.to(torch.promote_types(images.dtype, torch.float32))  # half -> float; float64 stays
        return (images / 2 + 0.5).clamp(0, 1)

    def _observation(self) -> dict[str, torch.Tensor]:
        i = self._step
        if i < self.num_steps:
            t, t_next, stochastic = self.timesteps[i], self.next_timesteps[i], self.stochastic[i]
        else:  # after the last step the chain rests at the schedule's end, with no step left to take
            t = t_next = self.next_timesteps[-1]
            stochastic = False
        full = lambda v, dtype: torch.full((self.num_envs,), v, dtype=dtype, device=self.device)
        return {
            "latents": self._latents,
            "timestep": full(t, self.timestep_dtype),
            "next_timestep": full(t_next, self.timestep_dtype),
            "stochastic": full(stochastic, torch.bool),
            "prompt_embeds": self._prompt_embeds,
            "negative_prompt_embeds": self._negative_embeds.expand(self.num_envs, -1, -1),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """``options``: ``prompts`` (B strings, required), ``metadata`` (B dicts, optional) and
        ``shared_noise_group`` G (optional): consecutive groups of G envs start from the same noise;
        ``noise_slice`` (offset, total) (optional): these envs are rows of a global batch of ``total``, and their
        noise is those rows of the global batch's noise (multi-process training)."""
        options = options or {}
        prompts = options.get("prompts", [])
        # A string is a sequence too: "ab" must not become the prompts "a" and "b".
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(
                f"reset needs options['prompts'] as a list of {self.num_envs} strings, got {prompts!r:.80}"
            )
        prompts = list(prompts)
        if len(prompts) != self.num_envs:
            raise ValueError(f"reset needs options['prompts'] with {self.num_envs} prompts, got {len(prompts)}")
        metadata = list(options.get("metadata") or [{} for _ in prompts])
        if len(metadata) != self.num_envs or not all(isinstance(m, dict) for m in metadata):
            raise ValueError(f"reset's options['metadata'] must be {self.num_envs} dicts, one per prompt")
        self.prompts, self.prompt_metadata = prompts, metadata
        if seed is not None:
            self._generator.manual_seed(seed)
        if self._negative_embeds is None:
            self._negative_embeds = self.encode_prompts([""])
        self._prompt_embeds = self.encode_prompts(prompts)
        shared = int(options.get("shared_noise_group", 1))
        noise_slice = options.get("noise_slice")
        if self.num_envs % shared or (noise_slice is not None and noise_slice[0] % shared):
            raise ValueError(f"shared_noise_group {shared} must divide the {self.num_envs} envs")
        noise = noise_rows(self.num_envs, self.latent_shape, self._generator, noise_slice, repeat=shared)
        self._latents = (noise * self.init_noise_sigma()).to(self.device, self.dtype)
        self._step = 0
        return self._observation(), {"prompts": self.prompts}

    def final_latents(self, action: dict[str, torch.Tensor]) -> torch.Tensor:
        """Which latent the reward sees after the last step."""
        return action["next_latents"]

    def _check_action(self, action: Any) -> dict[str, torch.Tensor]:
        """``action`` as tensors of the batch's shape (``genrl.envs.actions``: numpy arrays converted, tensors kept
        as they are), or a one-line ``ValueError`` for one the chain cannot mean."""
        keys = self.single_action_space.spaces
        return as_action_tensors(action, keys, (self.num_envs, *self.latent_shape), self.device, self.dtype)

    def step(self, action: dict[str, torch.Tensor] | dict[str, np.ndarray]):
        """One denoising step to ``action["next_latents"]``; the last one decodes and, with a ``reward_fn``, scores
        (the module docstring has the rewards and ``info`` of each case)."""
        if self._step is None or self._step >= self.num_steps:
            raise RuntimeError("call reset() before step(); an episode ends after num_steps steps")
        action = self._check_action(action)
        self._latents = action["next_latents"]
        self._step += 1
        done = self._step == self.num_steps
        terminated = torch.full((self.num_envs,), done, device=self.device)
        truncated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        if not done:
            return self._observation(), torch.zeros(self.num_envs, device=self.device), terminated, truncated, {}
        # Under the caller's grad mode: a reparameterised rollout (DPG) keeps the graph through decode and reward.
        images = self.decode(self.final_latents(action))
        if self.reward_fn is None:  # the caller scores the images itself
            unscored = torch.full((self.num_envs,), float("nan"), device=self.device)
            return self._observation(), unscored, terminated, truncated, {"images": images}
        rewards, parts, seconds = score_images(self.reward_fn, images, self.prompts, self.prompt_metadata)
        info = {"images": images, "reward_parts": parts, "reward_time_s": seconds}
        return self._observation(), rewards.to(self.device), terminated, truncated, info
