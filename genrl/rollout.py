"""Sampling: run the policy in the env for one batch and return what the buffer stores."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import NamedTuple

import torch

from genrl.distributed import NoiseSlice
from genrl.envs import DenoisingEnv
from genrl.policy import DenoisingPolicy


class SamplingBatch(NamedTuple):
    """One sampling batch of this process: its prompts, the seeds of the global batch, and its rows of it."""

    prompts: list[str]
    noise_seed: int
    step_seed: int
    noise_slice: NoiseSlice | None = None


@dataclass
class Rollout:
    prompts: list[str]
    metadata: list[dict]
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    steps: list[dict[str, torch.Tensor]]  # the stochastic steps only
    rewards: torch.Tensor
    images: torch.Tensor
    reward_parts: dict[str, torch.Tensor]  # a composite reward's parts, each (B,)
    sample_time_s: float
    reward_time_s: float
    reward_future: Future | None = None  # set while the reward is computed in the background

    def resolve(self) -> Rollout:
        """Wait for a background reward; afterwards ``rewards``, ``reward_parts`` and ``reward_time_s`` hold."""
        if self.reward_future is not None:
            self.rewards, self.reward_parts, self.reward_time_s = self.reward_future.result()
            self.reward_future = None
        return self


@torch.no_grad()
def collect(
    env: DenoisingEnv,
    policy: DenoisingPolicy,
    prompts: list[str],
    metadata: list[dict],
    noise_seed: int,
    step_seed: int,
    shared_noise_group: int = 1,
    noise_slice: NoiseSlice | None = None,
) -> Rollout:
    """``noise_seed`` seeds the initial latents, ``step_seed`` the policy's step noise: together they fix the batch.
    With ``shared_noise_group`` G, each run of G consecutive images starts from one initial latent. With
    ``noise_slice``, this batch is those rows of a global batch (one process of several)."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(step_seed)
    options = {
        "prompts": prompts,
        "metadata": metadata,
        "shared_noise_group": shared_noise_group,
        "noise_slice": noise_slice,
    }
    obs, _ = env.reset(seed=noise_seed, options=options)
    embeds, negative = obs["prompt_embeds"], obs["negative_prompt_embeds"]
    steps = []
    for _ in range(env.num_steps):
        action, log_prob = policy.act(obs, generator, noise_slice)
        if obs["stochastic"].all():
            steps.append(
                {
                    "latents": obs["latents"],
                    "next_latents": action["next_latents"],
                    "timestep": obs["timestep"],
                    "next_timestep": obs["next_timestep"],
                    "log_prob": log_prob,
                }
            )
        obs, rewards, terminated, _, info = env.step(action)
    assert bool(terminated.all())
    reward_time = info.get("reward_time_s", 0.0)
    return Rollout(
        prompts,
        metadata,
        embeds,
        negative,
        steps,
        rewards,
        info["images"],
        info.get("reward_parts", {}),
        sample_time_s=time.perf_counter() - start - reward_time,
        reward_time_s=reward_time,
        reward_future=info.get("reward_future"),
    )
