"""Sampling: run the policy in the env for one batch and return what the buffer stores."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from genrl.envs import DenoisingEnv
from genrl.policy import DenoisingPolicy


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


@torch.no_grad()
def collect(
    env: DenoisingEnv,
    policy: DenoisingPolicy,
    prompts: list[str],
    metadata: list[dict],
    noise_seed: int,
    step_seed: int,
) -> Rollout:
    """``noise_seed`` seeds the initial latents, ``step_seed`` the policy's step noise: together they fix the batch."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(step_seed)
    obs, _ = env.reset(seed=noise_seed, options={"prompts": prompts, "metadata": metadata})
    embeds, negative = obs["prompt_embeds"], obs["negative_prompt_embeds"]
    steps = []
    for _ in range(env.num_steps):
        action, log_prob = policy.act(obs, generator)
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
    reward_time = info["reward_time_s"]
    return Rollout(
        prompts,
        metadata,
        embeds,
        negative,
        steps,
        rewards,
        info["images"],
        info["reward_parts"],
        sample_time_s=time.perf_counter() - start - reward_time,
        reward_time_s=reward_time,
    )
