"""Sampling: run the policy in the env for one batch and return what the algorithms learn from.

Every algorithm samples through ``collect``: PPO and REINFORCE without a graph (they store each step's latents,
log-prob and mean), DPG with a graph over the last ``grad_steps`` steps (it backpropagates the reward through them).
"""

from __future__ import annotations

import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from genrl.envs import DenoisingEnv, score_images
from genrl.noise import NoiseSlice
from genrl.policy import DenoisingPolicy
from genrl.rewards.base import CheckedReward
from genrl.steps import StepDistribution


class SamplingBatch(NamedTuple):
    """One sampling batch of this process: its prompts, the seeds of the global batch, and its rows of it; and the
    prompts' metadata for the reward (one dict per prompt; None: empty)."""

    prompts: list[str]
    noise_seed: int
    step_seed: int
    noise_slice: NoiseSlice | None = None
    metadata: list[dict[str, Any]] | None = None


@dataclass
class Rollout:
    prompts: list[str]
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    steps: list[dict[str, torch.Tensor]]  # the stochastic steps only, detached (``TrajectoryBuffer.add_rollout``)
    rewards: torch.Tensor  # with its graph where sampled with grad_steps
    images: torch.Tensor
    reward_parts: dict[str, torch.Tensor]  # a composite reward's parts, each (B,)
    sample_time_s: float
    reward_time_s: float
    reward_wait_s: float = 0.0  # how long ``resolve`` waited for a background reward
    reward_future: Future | None = None  # set while the reward is computed in the background
    in_background: bool = False
    # (observation, distribution) of the stochastic steps sampled with a graph (DPG's KL term)
    graph_steps: list[tuple[dict[str, torch.Tensor], StepDistribution]] = field(default_factory=list)
    # The clean latents the images were decoded from (detached): where forward-process losses (denoising, flow
    # matching on the policy's own samples: DiffusionNFT, AWM) start, through ``ModelAdapter.add_noise``.
    final_latents: torch.Tensor | None = None

    def resolve(self) -> Rollout:
        """Wait for a background reward; afterwards ``rewards``, ``reward_parts`` and ``reward_time_s`` hold."""
        if self.reward_future is not None:
            start = time.perf_counter()
            self.rewards, self.reward_parts, self.reward_time_s = self.reward_future.result()
            self.reward_wait_s = time.perf_counter() - start
            self.reward_future = None
        return self

    @property
    def blocked_s(self) -> float:
        """Seconds the caller spent on the reward: all of it, or only the wait where it ran in the background."""
        return self.reward_wait_s if self.in_background else self.reward_time_s

    def detach(self) -> Rollout:
        """Drop the graph (after a backward pass) so that keeping the rollout for logging keeps no activations."""
        self.rewards, self.images, self.graph_steps = self.rewards.detach(), self.images.detach(), []
        return self


def collect(
    env: DenoisingEnv,
    policy: DenoisingPolicy,
    batch: SamplingBatch,
    shared_noise_group: int = 1,
    grad_steps: int = 0,
    background_reward: tuple[CheckedReward, Executor] | None = None,
    keep_means: bool = False,
) -> Rollout:
    """Samples ``batch``: its ``noise_seed`` seeds the initial latents, its ``step_seed`` the policy's step noise,
    so the two fix the batch. With ``shared_noise_group`` G, each run of G consecutive images starts from one
    initial latent. The last ``grad_steps`` steps keep their graph (reparameterised: the same chain either way).
    ``keep_means``: each stochastic step also keeps its mean (GRPO-Guard's RatioNorm; memory of another latent).
    ``background_reward`` (reward, executor), for an env built without a reward: the images are scored in the
    executor while the caller samples on (``Rollout.resolve`` waits for them)."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(batch.step_seed)
    options = {
        "prompts": batch.prompts,
        "metadata": batch.metadata,
        "shared_noise_group": shared_noise_group,
        "noise_slice": batch.noise_slice,
    }
    obs, _ = env.reset(seed=batch.noise_seed, options=options)
    embeds, negative = obs["prompt_embeds"], obs["negative_prompt_embeds"]
    steps, graph_steps = [], []
    for i in range(env.num_steps):
        with torch.set_grad_enabled(i >= env.num_steps - grad_steps):
            action, dist = policy.sample_action(obs, generator, batch.noise_slice)
            if obs["stochastic"].all():  # a deterministic step has no log-prob (std 0), and is not trained
                if torch.is_grad_enabled():
                    graph_steps.append((obs, dist))
                steps.append(
                    {
                        "latents": obs["latents"].detach(),
                        "next_latents": action["next_latents"].detach(),
                        "timestep": obs["timestep"],
                        "next_timestep": obs["next_timestep"],
                        "log_prob": policy.action_log_prob(dist, action["next_latents"]).detach(),
                        **({"mean": dist.mean.detach()} if keep_means else {}),
                    }
                )
            obs, rewards, terminated, _, info = env.step(action)
    assert bool(terminated.all())
    final_latents = env.final_latents(action).detach()
    images, future, parts, reward_time = info["images"], None, info.get("reward_parts", {}), 0.0
    if background_reward is not None:
        reward, executor = background_reward
        # The episode's prompts and metadata, taken now: the next batch's reset replaces the env's own.
        future = executor.submit(score_images, reward, images.detach(), env.prompts, env.prompt_metadata)
    else:
        reward_time = info["reward_time_s"]
    return Rollout(
        batch.prompts,
        embeds,
        negative,
        steps,
        rewards,
        images,
        parts,
        sample_time_s=time.perf_counter() - start - reward_time,
        reward_time_s=reward_time,
        reward_future=future,
        in_background=future is not None,
        graph_steps=graph_steps,
        final_latents=final_latents,
    )
