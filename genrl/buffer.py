"""One trajectory layout for every algorithm.

Per trajectory: the prompt, its embedding (stored once, not per step), the reward and the advantage. Per
stochastic step: the latent, the next latent, the timesteps, and the log-prob and the step's mean at sampling time
(the mean for GRPO-Guard's RatioNorm). Minibatches are shuffled across samples and, independently per sample,
across timesteps (as DDPO does), so that one forward pass sees several timesteps.

On N processes each buffer holds its process's rows of the global batch (``place``), and minibatches are cut from
the global batch: every process draws the same permutation of the global samples and the same step orders, and
takes its own rows of each global minibatch (possibly none). So N processes cut the minibatches one process cuts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from genrl.rollout import Rollout


@dataclass
class Chunk:
    """One forward pass worth of (sample, step) pairs, flattened; ``obs`` is what ``policy.distribution`` takes."""

    obs: dict[str, torch.Tensor]
    next_latents: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor
    sample_index: torch.Tensor
    minibatch: int = 0
    """Index of its global minibatch in the pass (``optimize`` counts on across passes)."""
    old_means: torch.Tensor | None = None
    """The steps' means at sampling time (None where the buffer holds none)."""


@dataclass
class TrajectoryBuffer:
    prompts: list[str] = field(default_factory=list)
    prompt_embeds: list[torch.Tensor] = field(default_factory=list)  # (B, L, D) per batch
    latents: list[torch.Tensor] = field(default_factory=list)  # (B, T, C, h, w)
    next_latents: list[torch.Tensor] = field(default_factory=list)
    timesteps: list[torch.Tensor] = field(default_factory=list)  # (B, T)
    next_timesteps: list[torch.Tensor] = field(default_factory=list)
    log_probs: list[torch.Tensor] = field(default_factory=list)  # (B, T)
    means: list[torch.Tensor] = field(default_factory=list)  # (B, T, C, h, w); empty where the rollouts had none
    negative_prompt_embeds: torch.Tensor | None = None  # (1, L, D), shared by all
    advantages: torch.Tensor | None = None  # (N,)
    # Where the rows sit in the global batch of all processes (``place``): None, the buffer is the whole batch.
    global_rows: torch.Tensor | None = None  # (N,)
    global_size: int | None = None
    spare: Chunk | None = None
    """A chunk of the process's own rollouts for the passes of weight zero (``spare_chunk``), kept where subsetting
    may leave the buffer empty."""

    def add_rollout(self, rollout: Rollout) -> None:
        """A sampled batch: its prompts and embeddings, and per stochastic step (``rollout.steps``) ``latents``,
        ``next_latents``, ``timestep``, ``next_timestep``, ``log_prob`` and (optional) ``mean``."""
        stack = lambda key: torch.stack([s[key] for s in rollout.steps], dim=1)
        self.prompts += rollout.prompts
        self.prompt_embeds.append(rollout.prompt_embeds)
        self.negative_prompt_embeds = rollout.negative_prompt_embeds[:1]
        self.latents.append(stack("latents"))
        self.next_latents.append(stack("next_latents"))
        self.timesteps.append(stack("timestep"))
        self.next_timesteps.append(stack("next_timestep"))
        self.log_probs.append(stack("log_prob"))
        if rollout.steps and all("mean" in s for s in rollout.steps):
            self.means.append(stack("mean"))

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_steps(self) -> int:
        return self.latents[0].shape[1] if self.latents else 0

    @property
    def num_global(self) -> int:
        """Trajectories in the global batch (all processes)."""
        return len(self) if self.global_size is None else self.global_size

    def rows_in_global_batch(self) -> torch.Tensor:
        return torch.arange(len(self)) if self.global_rows is None else self.global_rows

    def place(self, rank: int, processes: int) -> None:
        """Marks the rows as process ``rank``'s share of a global batch over ``processes`` processes: row i of
        sampling batch b is row (b * processes + rank) * B + i of the global batch, B rows per batch and process."""
        sizes = {len(e) for e in self.prompt_embeds}
        if len(sizes) > 1:
            raise ValueError(f"every sampling batch must hold the same number of rows, got {sorted(sizes)}")
        batch = sizes.pop() if sizes else 1
        local = torch.arange(len(self))
        self.global_rows = (local // batch * processes + rank) * batch + local % batch
        self.global_size = len(self) * processes

    def subset(self, indices: torch.Tensor) -> TrajectoryBuffer:
        """The trajectories at ``indices`` of the global batch that this buffer holds (with their advantages), as
        a buffer of one batch; the global batch becomes the one of ``indices`` (every process passes the same)."""
        idx, new_rows = indices.cpu(), None
        if self.global_rows is not None:  # this buffer's rows among them, and where they sit in the new batch
            position = torch.full((self.num_global,), -1, dtype=torch.long)
            position[idx] = torch.arange(len(idx))
            new_rows = position[self.global_rows]
            idx = torch.nonzero(new_rows >= 0).squeeze(1)
        take = lambda parts: [torch.cat(parts)[idx.to(parts[0].device)]]
        return TrajectoryBuffer(
            prompts=[self.prompts[i] for i in idx.tolist()],
            prompt_embeds=take(self.prompt_embeds),
            latents=take(self.latents),
            next_latents=take(self.next_latents),
            timesteps=take(self.timesteps),
            next_timesteps=take(self.next_timesteps),
            log_probs=take(self.log_probs),
            means=take(self.means) if self.means else [],
            negative_prompt_embeds=self.negative_prompt_embeds,
            advantages=None if self.advantages is None else self.advantages[idx.to(self.advantages.device)],
            global_rows=None if new_rows is None else new_rows[idx],
            global_size=None if new_rows is None else len(indices),
        )

    def first_steps(self, count: int) -> TrajectoryBuffer:
        """The same trajectories with only their first ``count`` stochastic steps (``timestep_fraction``): the
        others leave the minibatches and the accumulation's (trajectory, step) pairs."""
        if count >= self.num_steps:
            return self
        first = lambda parts: [t[:, :count] for t in parts]
        return replace(
            self,
            latents=first(self.latents),
            next_latents=first(self.next_latents),
            timesteps=first(self.timesteps),
            next_timesteps=first(self.next_timesteps),
            log_probs=first(self.log_probs),
            means=first(self.means),
        )

    def minibatch_sizes(self, batch_size: int) -> list[int]:
        """Trajectories in each global minibatch: full ones, then the rest (only when the buffer was subset)."""
        full, rest = divmod(self.num_global, batch_size)
        return [batch_size] * full + ([rest] if rest else [])

    def minibatches(self, batch_size: int, steps_per_forward: int, generator: torch.Generator) -> Iterator[list[Chunk]]:
        """Yields this buffer's rows of each global minibatch of ``batch_size`` trajectories (``minibatch_sizes``),
        each as a list of chunks covering all their steps (no chunk where the buffer holds none of its rows).

        Chunk j of a minibatch holds, for every trajectory in it, the steps at positions
        [j * steps_per_forward, (j + 1) * steps_per_forward) of that trajectory's own random step order.
        The permutation and the step orders are drawn for the global batch, so they do not depend on the layout.
        """
        parts = self._concatenated()
        n, steps = self.num_global, self.num_steps
        order = torch.randperm(n, generator=generator)
        step_order = torch.stack([torch.randperm(steps, generator=generator) for _ in range(n)])
        local_row = torch.full((n,), -1, dtype=torch.long)  # global row -> row of this buffer (-1: another's)
        local_row[self.rows_in_global_batch()] = torch.arange(len(self))
        starts = [0, *accumulate(self.minibatch_sizes(batch_size))]
        device = parts["latents"].device
        for minibatch, (start, end) in enumerate(zip(starts[:-1], starts[1:])):
            mine = order[start:end][local_row[order[start:end]] >= 0]  # global rows, in the global order
            idx = local_row[mine].to(device)
            chunks = []
            for j in range(0, steps, steps_per_forward) if len(mine) else []:
                cols = step_order[mine, j : j + steps_per_forward].to(device)  # (b, k)
                rows = idx[:, None].expand_as(cols)
                chunks.append(self._chunk(parts, rows.reshape(-1), cols.reshape(-1), minibatch))
            yield chunks

    def spare_chunk(self) -> Chunk | None:
        """The first step of this buffer's first row, as a chunk (None for an empty buffer): what a process runs,
        weighted zero, where it holds no row of a minibatch but the others need it in step (``--fsdp``)."""
        if not len(self):
            return None
        first = torch.zeros(1, dtype=torch.long, device=self.latents[0].device)
        # Row 0 sits in the first part (a sampling batch, or a subset's only part): no need to join them all.
        return self._chunk(self._concatenated(lambda parts: parts[0][:1]), first, first, 0)

    def _concatenated(
        self, cat: Callable[[list[torch.Tensor]], torch.Tensor] = torch.cat
    ) -> dict[str, torch.Tensor | None]:
        """The buffer's per-batch parts joined by ``cat``."""
        if self.advantages is None:
            raise RuntimeError("set buffer.advantages before asking for minibatches")
        return {
            "latents": cat(self.latents),
            "next_latents": cat(self.next_latents),
            "timesteps": cat(self.timesteps),
            "next_timesteps": cat(self.next_timesteps),
            "log_probs": cat(self.log_probs),
            "embeds": cat(self.prompt_embeds),
            "means": cat(self.means) if self.means else None,
        }

    def _chunk(self, parts: dict, rows: torch.Tensor, cols: torch.Tensor, minibatch: int) -> Chunk:
        """The (row, step) pairs ``rows[i], cols[i]`` of the buffer's ``parts`` as one chunk."""
        obs = {
            "latents": parts["latents"][rows, cols],
            "timestep": parts["timesteps"][rows, cols],
            "next_timestep": parts["next_timesteps"][rows, cols],
            "stochastic": torch.ones_like(rows, dtype=torch.bool),
            "prompt_embeds": parts["embeds"][rows],
            "negative_prompt_embeds": self.negative_prompt_embeds.expand(len(rows), -1, -1),
        }
        old_means = None if parts["means"] is None else parts["means"][rows, cols]
        return Chunk(
            obs,
            parts["next_latents"][rows, cols],
            parts["log_probs"][rows, cols],
            self.advantages[rows],
            rows,
            minibatch,
            old_means,
        )
