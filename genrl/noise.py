"""The sampling noise, drawn for the global batch.

A run is defined on its global batch (every process's rows together). Each process draws the noise of the whole
global batch from the run's seed, as a single process would, and keeps its own rows: so the initial latents and
every step's noise, and hence the samples, are the same whether N processes share the batch or one does it all.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class NoiseSlice(NamedTuple):
    """Rows [offset, offset + local batch) of a global batch of ``total`` rows."""

    offset: int
    total: int


def noise_rows(
    rows: int, shape: tuple[int, ...], generator: torch.Generator, noise_slice: NoiseSlice | None, repeat: int = 1
) -> torch.Tensor:
    """Standard normal noise (rows, *shape): this process's rows of the global batch's noise, drawn as one
    process would draw it, so that N processes sample what one would. ``repeat``: consecutive runs of that many
    global rows share one draw (groups from one initial noise)."""
    offset, total = noise_slice or (0, rows)
    noise = torch.randn((total // repeat, *shape), generator=generator).repeat_interleave(repeat, dim=0)
    return noise[offset : offset + rows]
