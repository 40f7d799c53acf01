"""The denoising environment of every family: prompts in, latents through, decoded images scored at the end.

An environment is a Gymnasium vector env of B sub-envs, one per image. Observations are dicts of torch tensors on
the model's device; ``observation_space`` and ``action_space`` (and their ``single_`` versions, one row) declare
every key, shape and dtype, and ``{k: v.cpu().numpy()}`` of what ``reset`` and ``step`` return lies in them
(tests/envs/). ``genrl.envs.single`` wraps a one-image env into the numpy ``gymnasium.Env`` that
``gymnasium.make`` returns. The env owns the sampler's schedule, the model adapter's frozen text encoders and VAE,
and the reward call; the trainable denoiser lives in the policy.

Observation keys, the same on every step and after the last:

- ``latents`` (B, C, h, w), the UNet's dtype, at least fp32: the current state.
- ``timestep``, ``next_timestep`` (B,) int64: where this step goes from and to. -1 stands for "past timestep 0",
  where DDIM's last step lands on ``final_alpha_cumprod`` (a schedule that ends on t = 0). The flow samplers' are
  float32 sigmas instead (``genrl.samplers.flow_sde``).
- ``stochastic`` (B,) bool: False where the step is deterministic and carries no log-prob.
- ``prompt_embeds``, ``negative_prompt_embeds`` (B, L, D), the latents' dtype: the prompts' and the empty
  prompt's text tensors (``ModelAdapter.encode_prompts``: SD3, SDXL and FLUX carry a pooled embedding as a last row).

The observation after the last step (``terminated`` all True) has no step left: ``timestep`` and
``next_timestep`` both hold the schedule's end (the last step's ``next_timestep``) and ``stochastic`` is False.

Action keys: ``next_latents`` (the next state) and ``pred_original`` (the model's clean-image estimate, which
the LCM sampler decodes at the end; the others decode ``next_latents``: ``Sampler.decodes``), both (B, C, h, w):
the action of ``DenoisingPolicy.sample_action``. Each is a float torch tensor, taken as it is (a reparameterised rollout
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

from genrl.adapters.base import ModelAdapter
from genrl.envs.actions import as_action_tensors
from genrl.envs.scoring import score_images
from genrl.noise import noise_rows
from genrl.rewards import CheckedReward, RewardFn
from genrl.samplers.base import Sampler


class DenoisingEnv(gym.vector.VectorEnv):
    """B images sampled by ``sampler``'s steps (``genrl.samplers``) on the model behind ``adapter``
    (``genrl.adapters``): the adapter encodes the prompts and decodes the last latents, the sampler's schedule says
    which steps an episode takes and which draw noise."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}

    def __init__(
        self,
        num_envs: int,
        adapter: ModelAdapter,
        sampler: Sampler,
        reward_fn: RewardFn | None,
        num_steps: int,
        resolution: int | None = None,
    ):
        self.num_envs = num_envs
        self.adapter, self.sampler = adapter, sampler
        self.pipeline = adapter.pipeline
        if reward_fn is not None and not isinstance(reward_fn, CheckedReward):
            reward_fn = CheckedReward(reward_fn, "reward")
        self.reward_fn = reward_fn
        adapter.check()
        net = adapter.denoiser  # the UNet, or a flow model's transformer
        self.device = net.device
        # The state is at least fp32 whatever the weights' dtype: the step maths and log-probs read it
        # (genrl.precision); the denoiser and the VAE take it under autocast or cast to their own dtype.
        self.dtype = torch.promote_types(net.dtype, torch.float32)
        vae_scale = adapter.vae_scale
        self.resolution = resolution or adapter.default_resolution()
        multiple = vae_scale * adapter.latent_multiple()
        kind = adapter.denoiser_kind
        if self.resolution < 1 or self.resolution % multiple:
            raise ValueError(
                f"resolution {self.resolution} must be a positive multiple of {multiple} for this model "
                f"(its VAE and {kind} downsample by that much); e.g. {adapter.default_resolution()}"
            )
        largest = adapter.largest_latent()
        if largest is not None and self.resolution > largest * vae_scale:
            # Checked here, before any latent is drawn: diffusers would raise only in the first forward pass.
            most = largest * vae_scale
            raise ValueError(
                f"resolution {self.resolution} is over the {kind}'s position embedding, which takes at most {most} px "
                f"for this model; pass a resolution up to {most}, a multiple of {multiple}"
            )
        size = self.resolution // vae_scale
        self.latent_shape = (adapter.latent_channels, size, size)
        schedule = sampler.schedule(num_steps, adapter, size)
        if sampler.timestep_dtype == torch.long:
            num_train_timesteps = self.pipeline.scheduler.config.num_train_timesteps
            if not all(0 <= t < num_train_timesteps for t in schedule.timesteps):
                raise ValueError(
                    f"the {num_steps}-step schedule {schedule.timesteps} leaves the model's timesteps 0 to "
                    f"{num_train_timesteps - 1}; use fewer steps"
                )
        self.timesteps, self.next_timesteps = schedule.timesteps, schedule.next_timesteps
        self.stochastic = schedule.stochastic
        self.num_steps = len(schedule.timesteps)
        self.timestep_dtype = sampler.timestep_dtype
        self._declare_spaces()

        self._generator = torch.Generator(device="cpu")
        self._negative_embeds = None
        self._step = None
        self._latents = None

    def text_shape(self) -> tuple[int, int]:
        """One prompt's text tensor: (tokens, width)."""
        return self.adapter.text_shape()

    def timestep_space(self) -> gym.Space:
        """The space of ``timestep`` and ``next_timestep``: integer timesteps from -1 ("past timestep 0", a DDIM
        schedule that ends on t = 0) to the last training timestep, or a flow sampler's sigmas from 1 to 0."""
        if self.timestep_dtype != torch.long:
            return gym.spaces.Box(0.0, 1.0, (), dtype=torch.empty((), dtype=self.timestep_dtype).numpy().dtype)
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
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.adapter.encode_prompts(prompts).to(self.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, 3, H, W) in [0, 1]. Differentiable; wrap in no_grad where no gradient is wanted."""
        return self.adapter.decode(latents)

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
            self._negative_embeds = self.adapter.negative_text().to(self.dtype)
        self._prompt_embeds = self.encode_prompts(prompts)
        shared = int(options.get("shared_noise_group", 1))
        noise_slice = options.get("noise_slice")
        if self.num_envs % shared or (noise_slice is not None and noise_slice[0] % shared):
            raise ValueError(f"shared_noise_group {shared} must divide the {self.num_envs} envs")
        noise = noise_rows(self.num_envs, self.latent_shape, self._generator, noise_slice, repeat=shared)
        self._latents = (noise * self.adapter.init_noise_sigma()).to(self.device, self.dtype)
        self._step = 0
        return self._observation(), {"prompts": self.prompts}

    def final_latents(self, action: dict[str, torch.Tensor]) -> torch.Tensor:
        """Which latent the reward sees after the last step: the sampler's (LCM: its clean estimate)."""
        return action[self.sampler.decodes]

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
