"""Training on N processes (``accelerate launch --multi_gpu --num_processes N -m genrl.train``); a plain
``python -m genrl.train`` is one process of one, and nothing here changes what it does.

The run is defined on the global batch, and each process takes its slice of it:

- sampling batch b holds ``sample_batch_size x N`` prompts and initial noises, drawn from the run's seeds as one
  process would draw them; process r samples rows [r B, (r + 1) B) (``NoiseSlice``), step noise included;
- rewards are gathered batch by batch, so per-prompt statistics, advantages and metrics see the global batch;
- PPO and REINFORCE cut their minibatches from the global batch (``TrajectoryBuffer.minibatches``): a global
  minibatch holds ``train_batch_size x N`` trajectories, and a process trains on its rows of it (possibly none),
  each chunk's loss weighted by its share of the optimizer step's global (trajectory, step) pairs; the gradients
  are summed over processes before clipping, and the training statistics are pair-weighted sums summed over
  processes (``sum_totals``). So N processes take, and log, the optimizer steps of one process;
- DPG's gradients are averaged over processes before clipping (equal local batches: the average of the local
  means is the global mean), so that every process takes the same optimizer step there too;
- only the main process writes the run directory and checkpoints; every process resumes from them.
"""

from __future__ import annotations

import math
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list

from genrl.noise import NoiseSlice


def launch_command(processes: int, module: str, args: list[str]) -> list[str]:
    """The command line running ``python -m module args`` on ``processes`` processes: plain Python for one,
    ``accelerate launch`` for several (``accelerate_args``)."""
    if processes == 1:
        return [sys.executable, "-m", module, *args]
    return [sys.executable, "-m", "accelerate.commands.launch", *accelerate_args(processes, module, args)]


def accelerate_args(
    processes: int, module: str, args: list[str], machines: Machines | None = None, rendezvous_timeout_s: float = 600
) -> list[str]:
    """``accelerate launch``'s arguments for ``python -m module args`` on ``processes`` processes: on this machine, on
    a free port so that concurrent runs do not collide, or as machine ``machines.rank`` of several (``processes`` in
    all). The values accelerate would otherwise warn it took by default are given (genrl uses no mixed precision nor
    compilation of accelerate's). The launcher looks at its processes every second rather than every 0.1 s: it stops
    them all once one has failed, and the others first get time to say why they stop (a closed connection is noticed
    at once). On several machines the launchers meet within ``rendezvous_timeout_s`` (torch's static rendezvous: a
    TCP store on the main machine, 600 s by default) or fail."""
    settings = ["--mixed_precision", "no", "--dynamo_backend", "no", "--monitor_interval", "1"]
    if machines is None or machines.count == 1:
        place = ["--num_machines", "1", "--main_process_port", str(free_port())]
    else:
        place = [
            *("--num_machines", str(machines.count), "--machine_rank", str(machines.rank)),
            *("--main_process_ip", machines.main_ip, "--main_process_port", str(machines.main_port)),
            *("--rdzv_conf", f"timeout={math.ceil(rendezvous_timeout_s)}"),
        ]
    return ["--multi_gpu", "--num_processes", str(processes), *place, *settings, "-m", module, *args]


@dataclass(frozen=True)
class Machines:
    """Several machines (nodes) of one run: how many, this one's rank, and where the main one (rank 0) listens."""

    count: int
    rank: int
    main_ip: str
    main_port: int


def free_port() -> int:
    """A local TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Processes:
    def __init__(self, device: str, timeout_s: float):
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        # A collective waits at most timeout_s for a process that hangs; one that dies is noticed at once.
        handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))] if distributed else []
        self.accelerator = Accelerator(cpu=device == "cpu", kwargs_handlers=handlers)
        self.rank = self.accelerator.process_index
        self.count = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        # One device per process where there are several GPUs; as asked otherwise.
        self.device = str(self.accelerator.device) if self.count > 1 and device.startswith("cuda") else device
        self.sharded = False
        """The denoiser's weights are sharded (``--fsdp``): every process runs every denoiser pass in step."""

    def noise_slice(self, local_batch: int) -> NoiseSlice:
        return NoiseSlice(self.rank * local_batch, self.count * local_batch)

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """The mean of every process's gradients, in place on each (a missing gradient counts as zeros)."""
        self._reduce_gradients(params, "mean")

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """The sum of every process's gradients, in place on each (a missing gradient counts as zeros)."""
        self._reduce_gradients(params, "sum")

    def _reduce_gradients(self, params: list[torch.nn.Parameter], reduction: str) -> None:
        if self.count == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.accelerator.reduce(torch.cat([g.flatten() for g in grads]), reduction=reduction)
        start = 0
        for p, g in zip(params, grads):
            p.grad = flat[start : start + g.numel()].view_as(g).clone()
            start += g.numel()

    def most(self, value: int) -> int:
        """The largest of every process's ``value``."""
        if self.count == 1:
            return value
        return int(self.accelerator.reduce(torch.tensor([value], device=self.device), reduction="max").item())

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenated in process order (for a batch: the global batch's rows)."""
        return tensor if self.count == 1 else self.accelerator.gather(tensor.contiguous())

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        if self.count == 1 or not stats:
            return stats
        keys = sorted(stats)
        values = self.accelerator.reduce(torch.tensor([stats[k] for k in keys], dtype=torch.float64), "mean")
        return dict(zip(keys, values.tolist()))

    def sum_totals(self, totals: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        """Per key, the (weighted sum, weight) pairs of every process added up (a key some processes lack counts
        as (0, 0) there); the same result, summed in process order, on every process."""
        if self.count == 1:
            return totals
        every: list[dict[str, tuple[float, float]]] = [{} for _ in range(self.count)]
        torch.distributed.all_gather_object(every, totals)
        keys = dict.fromkeys(key for process in every for key in process)
        return {
            key: (
                sum(process[key][0] for process in every if key in process),
                sum(process[key][1] for process in every if key in process),
            )
            for key in keys
        }

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value``, on every process."""
        if self.count == 1:
            return value
        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def wait(self) -> None:
        if self.count > 1:
            self.accelerator.wait_for_everyone()
