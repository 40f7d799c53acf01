"""How many threads a CPU run computes with: the cores this process may use that nothing else keeps busy.

torch's intra-op threads meet at a barrier after every parallel operation. When another process holds one of the
cores, the thread scheduled there is preempted, and the others wait at the barrier (spinning, so using CPU) until it
runs again: on the 2-core development machine, two threads beside one busy process made an epoch 2.7x slower and
spent 1.5-1.85x the CPU (benchmarks/cpu_sharing.py). A thread per idle core avoids the barrier waits.

``--threads N`` (or ``OMP_NUM_THREADS``) overrides the choice.
"""

from __future__ import annotations

import os
import time


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all cores since boot, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as stat:
            fields = [float(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle and iowait
    return sum(fields) - idle, sum(fields)


class OtherLoad:
    """How many cores other processes keep busy from now until ``cores()`` is asked: /proc/stat's busy time of every
    core, less this process's own CPU time. Measured while this process loads its model, a run started at the same
    moment is caught loading its own (measured while sleeping, two such runs would each find the machine idle)."""

    def __init__(self) -> None:
        self._start = (_cpu_times(), time.process_time(), time.perf_counter())

    def cores(self, min_window_s: float = 0.25) -> float:
        """Cores busy with other work, on average over the window (0 where the system does not say)."""
        (before, own_before, wall_before) = self._start
        waited = time.perf_counter() - wall_before
        if waited < min_window_s:  # too short a window to tell
            time.sleep(min_window_s - waited)
        after, own, wall = _cpu_times(), time.process_time() - own_before, time.perf_counter() - wall_before
        if before is None or after is None or after[1] <= before[1]:
            return 0.0
        busy = (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)
        return max(0.0, busy - own / wall)


def default_threads(load: OtherLoad) -> int:
    """The cores this process may use, less those other processes kept busy over ``load``'s window (at least 1);
    ``OMP_NUM_THREADS`` where it is set."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, usable_cpus() - round(load.cores()))
