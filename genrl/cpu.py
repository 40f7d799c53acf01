"""How many threads a CPU run computes with, and how its threads wait.

The count: the thread count sets how torch splits its float sums, so two counts give two sets of numbers from one
seed. It therefore never follows the machine's load: by default a run takes the cores this process may use (its
affinity mask), shared among the processes that ``accelerate launch`` started on this machine, and records the
number in config.json; ``--threads N`` or ``OMP_NUM_THREADS`` pin it. A rerun of a seed with the same count, torch
build and CPU family gives the same numbers, busy machine or idle.

The waiting: torch's OpenMP threads meet at a barrier after every parallel operation. libgomp's default makes a
thread that arrives first spin there for 300,000 rounds before it sleeps. When another process takes one of the
cores, the thread scheduled there is preempted, and the other spins away its core's time until it runs again: on
the 2-core development machine, a busy process that arrived after the run had started made its epochs 3.8x slower
and 2.4x dearer in CPU. Sleeping at once (OMP_WAIT_POLICY=PASSIVE) shares fairly but made the idle run 1.75x
slower, as every small operation then wakes its threads from sleep. ``spin_briefly`` sets GOMP_SPINCOUNT=1000 before
torch loads libgomp (``genrl/__init__.py``): long enough to bridge the gap between two operations, short enough to
give the core away when the partner is preempted. docs/performance.md, "CPU threads and sharing the machine", has the
measurements (``benchmarks/cpu_sharing.py``).
"""

from __future__ import annotations

import os

MAX_THREADS = 512
"""The most ``--threads`` accepts, the same on every machine so that any saved config.json loads everywhere."""


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """``OMP_NUM_THREADS`` where it is set; else the usable cores divided among this machine's processes of the run
    (``LOCAL_WORLD_SIZE``, which accelerate and torchrun set), at least 1."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return min(MAX_THREADS, max(1, int(os.environ["OMP_NUM_THREADS"])))
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, usable_cpus() // max(1, int(local) if local.isdigit() else 1))


SPIN_COUNT = 1000
"""Rounds a waiting OpenMP thread spins before it sleeps (libgomp's default: 300,000)."""


def spin_briefly() -> None:
    """Make waiting OpenMP threads sleep after ``SPIN_COUNT`` rounds (read by libgomp as torch loads it: call before
    that); a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
