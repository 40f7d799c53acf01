"""What the LCM and DDPM environments share: prompts in, latents through, decoded images scored at the end.

An environment is a Gymnasium vector env of B sub-envs, one per image. Observations and actions are dicts of
torch tensors on the model's device. The env owns the timestep schedule, the frozen text encoder and VAE, and
the reward call; the trainable denoiser lives in the policy.

Observation keys: ``latents`` (B, C, h, w), ``timestep``, ``next_timestep`` (B,) long, ``stochastic`` (B,) bool
(False where the step is deterministic and carries no log-prob), ``prompt_embeds`` (B, L, D),
``negative_prompt_embeds`` (B, L, D). Action keys: ``next_latents`` (the next state) and ``pred_original``
(the model's clean-image estimate, which the LCM env decodes at the end).

The reward is zero before the last step. Where the caller has grad enabled (a reparameterised rollout), the
decode and the reward keep the graph. With a ``reward_executor`` (say a thread pool), the last step returns
NaN rewards at once and ``info["reward_future"]``, a future of (rewards, parts, seconds), so that the caller can
sample the next batch while the reward is computed; the values are those the synchronous call would give.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from genrl.distributed import noise_rows
from genrl.rewards import CheckedReward, RewardFn


class DenoisingEnv(gym.vector.VectorEnv):
    metadata = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}

    def __init__(
        self,
        num_envs: int,
        pipeline: Any,
        reward_fn: RewardFn,
        timesteps: list[int],
        next_timesteps: list[int],
        stochastic: list[bool],
        resolution: int | None = None,
        reward_executor: Executor | None = None,
    ):
        self.num_envs = num_envs
        self.reward_executor = reward_executor
        self.pipeline = pipeline
        self.reward_fn = reward_fn if isinstance(reward_fn, CheckedReward) else CheckedReward(reward_fn, "reward")
        self.timesteps, self.next_timesteps, self.stochastic = timesteps, next_timesteps, stochastic
        self.num_steps = len(timesteps)
        self.device = pipeline.unet.device
        self.dtype = pipeline.unet.dtype
        vae_scale = 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
        self.resolution = resolution or pipeline.unet.config.sample_size * vae_scale
        # The VAE halves the image and the UNet the latent once per down block but the last.
        multiple = vae_scale * 2 ** (len(pipeline.unet.config.block_out_channels) - 1)
        if self.resolution < 1 or self.resolution % multiple:
            raise ValueError(
                f"resolution {self.resolution} must be a positive multiple of {multiple} for this model "
                f"(its VAE and UNet downsample by that much); e.g. {pipeline.unet.config.sample_size * vae_scale}"
            )
        self.latent_shape = (
            pipeline.unet.config.in_channels,
            self.resolution // vae_scale,
            self.resolution // vae_scale,
        )

        self.single_action_space = gym.spaces.Box(-np.inf, np.inf, self.latent_shape, np.float32)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (num_envs, *self.latent_shape), np.float32)
        self.single_observation_space = gym.spaces.Dict(
            latents=self.single_action_space,
            timestep=gym.spaces.Discrete(pipeline.scheduler.config.num_train_timesteps),
        )
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)

        self._generator = torch.Generator(device="cpu")
        self._negative_embeds = None
        self._step = None
        self._latents = None

    @property
    def num_stochastic_steps(self) -> int:
        return sum(self.stochastic)

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
        full = lambda v, dtype: torch.full((self.num_envs,), v, dtype=dtype, device=self.device)  # noqa: E731
        return {
            "latents": self._latents,
            "timestep": full(self.timesteps[self._step], torch.long),
            "next_timestep": full(self.next_timesteps[self._step], torch.long),
            "stochastic": full(self.stochastic[self._step], torch.bool),
            "prompt_embeds": self._prompt_embeds,
            "negative_prompt_embeds": self._negative_embeds.expand(self.num_envs, -1, -1),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """``options``: ``prompts`` (B strings, required), ``metadata`` (B dicts, optional) and
        ``shared_noise_group`` G (optional): consecutive groups of G envs start from the same noise;
        ``noise_slice`` (offset, total) (optional): these envs are rows of a global batch of ``total``, and their
        noise is those rows of the global batch's noise (multi-process training)."""
        options = options or {}
        prompts = list(options.get("prompts", []))
        if len(prompts) != self.num_envs:
            raise ValueError(f"reset needs options['prompts'] with {self.num_envs} prompts, got {len(prompts)}")
        self.prompts = prompts
        self.prompt_metadata = list(options.get("metadata") or [{} for _ in prompts])
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
        self._latents = (noise * self.pipeline.scheduler.init_noise_sigma).to(self.device, self.dtype)
        self._step = 0
        return self._observation(), {"prompts": self.prompts}

    def final_latents(self, action: dict[str, torch.Tensor]) -> torch.Tensor:
        """Which latent the reward sees after the last step."""
        return action["next_latents"]

    def step(self, action: dict[str, torch.Tensor]):
        if self._step is None or self._step >= self.num_steps:
            raise RuntimeError("call reset() before step(); an episode ends after num_steps steps")
        self._latents = action["next_latents"]
        self._step += 1
        zeros = torch.zeros(self.num_envs, device=self.device)
        done = self._step == self.num_steps
        terminated = torch.full((self.num_envs,), done, device=self.device)
        truncated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        if not done:
            return self._observation(), zeros, terminated, truncated, {}
        # Under the caller's grad mode: a reparameterised rollout (DPG) keeps the graph through decode and reward.
        images = self.decode(self.final_latents(action))
        final_obs = {"latents": self._latents}
        if self.reward_executor is not None:
            # The caller samples on while the reward is computed; it arrives through the future.
            future = self.reward_executor.submit(self._score, images, self.prompts, self.prompt_metadata)
            pending = torch.full((self.num_envs,), float("nan"), device=self.device)
            return final_obs, pending, terminated, truncated, {"images": images, "reward_future": future}
        rewards, parts, seconds = self._score(images, self.prompts, self.prompt_metadata)
        info = {"images": images, "reward_parts": parts, "reward_time_s": seconds}
        return final_obs, rewards, terminated, truncated, info

    def _score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]):
        start = time.perf_counter()
        rewards, parts = self.reward_fn.score(images, prompts, metadata)
        return rewards.to(self.device), parts, time.perf_counter() - start
