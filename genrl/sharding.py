"""``--fsdp``: the denoiser's frozen weights sharded over the run's processes with torch's FSDP2 (``fully_shard``).

Under LoRA the frozen weights are nearly all of the memory a process holds (FLUX: 12 B of them against a LoRA of
tens of millions), so each process keeps 1/N of them, and FSDP2 gathers a block's weights just before the block
runs (forward, and again for the backward) and frees them after. The trainable LoRA weights are left out of the
sharding (``ignored_params``) and stay whole on every process, as without ``--fsdp``: genrl's own gradient sum
over processes, clipping, optimizer, EMA, checkpoints and the LoRA export work on them unchanged, and the updates
are the plain multi-process run's.

The price is lockstep: every block's forward and backward is a collective, so every process must run the same
denoiser passes in the same order. Sampling does (equal local batches); the minibatch loop gives a process that
holds no row of a minibatch a pass of weight zero (``genrl.algos.common.train_minibatches``); the evaluation set
and the EMA grid are sampled by every process, and the main process logs them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard


def shard_frozen_weights(
    model: torch.nn.Module, trainable: Iterable[torch.nn.Parameter], device: str
) -> tuple[int, int]:
    """Shards ``model``'s weights other than ``trainable`` over every process of the default process group: one
    FSDP unit per block of each of its block lists (a UNet's down and up blocks, a transformer's blocks), then the
    model itself for the rest; in place. Returns how many of the frozen weights this process holds, and of how
    many."""
    mesh = init_device_mesh(torch.device(device).type, (torch.distributed.get_world_size(),))
    ignored = set(trainable)
    for child in model.children():
        if isinstance(child, torch.nn.ModuleList):
            for block in child:
                fully_shard(block, mesh=mesh, ignored_params=ignored)
    # The root too frees its weights after each pass (FSDP2 keeps the root's gathered by default): the main
    # process alone saves the LoRA, and state_dict() would free them there only, putting the next pass out of step.
    fully_shard(model, mesh=mesh, ignored_params=ignored, reshard_after_forward=True)
    frozen = [p for p in model.parameters() if p not in ignored]
    return sum(p.to_local().numel() for p in frozen), sum(p.numel() for p in frozen)
