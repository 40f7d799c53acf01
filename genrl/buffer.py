"""One trajectory layout for every algorithm.

Per trajectory: the prompt, its embedding (stored once, not per step), the reward and the advantage. Per
stochastic step: the latent, the next latent, the timesteps and the log-prob at sampling time. Minibatches are
shuffled across samples and, independently per sample, across timesteps (as DDPO does), so that one forward
pass sees several timesteps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate

import torch


@dataclass
class Chunk:
    """One forward pass worth of (sample, step) pairs, flattened; ``obs`` is what ``policy.distribution`` takes."""

    obs: dict[str, torch.Tensor]
    next_latents: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor
    sample_index: torch.Tensor


@dataclass
class TrajectoryBuffer:
    prompts: list[str] = field(default_factory=list)
    metadata: list[dict] = field(default_factory=list)
    prompt_embeds: list[torch.Tensor] = field(default_factory=list)  # (B, L, D) per batch
    latents: list[torch.Tensor] = field(default_factory=list)  # (B, T, C, h, w)
    next_latents: list[torch.Tensor] = field(default_factory=list)
    timesteps: list[torch.Tensor] = field(default_factory=list)  # (B, T)
    next_timesteps: list[torch.Tensor] = field(default_factory=list)
    log_probs: list[torch.Tensor] = field(default_factory=list)  # (B, T)
    rewards: list[torch.Tensor] = field(default_factory=list)  # (B,)
    negative_prompt_embeds: torch.Tensor | None = None  # (1, L, D), shared by all
    advantages: torch.Tensor | None = None  # (N,)

    def add_batch(
        self,
        prompts: list[str],
        metadata: list[dict],
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor,
        steps: list[dict[str, torch.Tensor]],
        rewards: torch.Tensor,
    ) -> None:
        """``steps``: per stochastic step, ``latents``, ``next_latents``, ``timestep``, ``next_timestep`` and
        ``log_prob``."""
        stack = lambda key: torch.stack([s[key] for s in steps], dim=1)  # noqa: E731
        self.prompts += prompts
        self.metadata += metadata
        self.prompt_embeds.append(prompt_embeds)
        self.negative_prompt_embeds = negative_prompt_embeds[:1]
        self.latents.append(stack("latents"))
        self.next_latents.append(stack("next_latents"))
        self.timesteps.append(stack("timestep"))
        self.next_timesteps.append(stack("next_timestep"))
        self.log_probs.append(stack("log_prob"))
        self.rewards.append(rewards)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_steps(self) -> int:
        return self.latents[0].shape[1] if self.latents else 0

    def all_rewards(self) -> torch.Tensor:
        return torch.cat(self.rewards)

    def subset(self, indices: torch.Tensor) -> TrajectoryBuffer:
        """The trajectories at ``indices`` (with their advantages), as a buffer of one batch."""
        idx = indices.cpu()
        take = lambda parts: [torch.cat(parts)[idx.to(parts[0].device)]]  # noqa: E731
        return TrajectoryBuffer(
            prompts=[self.prompts[i] for i in idx.tolist()],
            metadata=[self.metadata[i] for i in idx.tolist()],
            prompt_embeds=take(self.prompt_embeds),
            latents=take(self.latents),
            next_latents=take(self.next_latents),
            timesteps=take(self.timesteps),
            next_timesteps=take(self.next_timesteps),
            log_probs=take(self.log_probs),
            rewards=take(self.rewards),
            negative_prompt_embeds=self.negative_prompt_embeds,
            advantages=None if self.advantages is None else self.advantages[idx.to(self.advantages.device)],
        )

    def minibatch_sizes(self, batch_size: int) -> list[int]:
        """Trajectories in each minibatch: full ones, then the rest (only when the buffer was subset)."""
        full, rest = divmod(len(self), batch_size)
        return [batch_size] * full + ([rest] if rest else [])

    def minibatches(self, batch_size: int, steps_per_forward: int, generator: torch.Generator) -> Iterator[list[Chunk]]:
        """Yields minibatches of ``batch_size`` trajectories (``minibatch_sizes``), each as a list of chunks
        covering all its steps.

        Chunk j of a minibatch holds, for every trajectory in it, the steps at positions
        [j * steps_per_forward, (j + 1) * steps_per_forward) of that trajectory's own random step order.
        """
        if self.advantages is None:
            raise RuntimeError("set buffer.advantages before asking for minibatches")
        cat = lambda parts: torch.cat(parts)  # noqa: E731
        latents, next_latents = cat(self.latents), cat(self.next_latents)
        timesteps, next_timesteps, log_probs = cat(self.timesteps), cat(self.next_timesteps), cat(self.log_probs)
        embeds = cat(self.prompt_embeds)
        n, steps = len(self), self.num_steps
        order = torch.randperm(n, generator=generator)
        step_order = torch.stack([torch.randperm(steps, generator=generator) for _ in range(n)])
        starts = [0, *accumulate(self.minibatch_sizes(batch_size))]
        for start, end in zip(starts[:-1], starts[1:]):
            idx = order[start:end].to(latents.device)
            chunks = []
            for j in range(0, steps, steps_per_forward):
                cols = step_order[idx.cpu(), j : j + steps_per_forward].to(latents.device)  # (b, k)
                rows = idx[:, None].expand_as(cols)
                rows, cols = rows.reshape(-1), cols.reshape(-1)
                obs = {
                    "latents": latents[rows, cols],
                    "timestep": timesteps[rows, cols],
                    "next_timestep": next_timesteps[rows, cols],
                    "stochastic": torch.ones_like(rows, dtype=torch.bool),
                    "prompt_embeds": embeds[rows],
                    "negative_prompt_embeds": self.negative_prompt_embeds.expand(len(rows), -1, -1),
                }
                chunks.append(Chunk(obs, next_latents[rows, cols], log_probs[rows, cols], self.advantages[rows], rows))
            yield chunks
