"""How many threads a CPU run computes with, and how its threads wait.

The count: the thread count sets how torch splits its float sums, so two counts give two sets of numbers from one
seed. It therefore never follows the machine's load: by default a run takes the cores this process may use (its
affinity mask), shared among the processes that ``accelerate launch`` started on this machine, and records the
number in config.json; ``--threads N`` or ``OMP_NUM_THREADS`` pin it. A rerun of a seed with the same count, torch
build and CPU family gives the same numbers, busy machine or idle.

The waiting: torch's OpenMP threads meet at a barrier after every parallel operation, where libgomp makes a thread
that arrives first spin for 300,000 rounds before it sleeps. On an idle machine that keeps the threads hot between
operations. When another process takes one of the cores, the partner of a spinning thread is preempted and the
spinner burns its core's time until the partner runs again: on the 2-core development machine a busy process made
the epochs 3.3-3.9x slower and 2.2-2.4x dearer in CPU. Spinning 1,000 rounds shares fairly, but made the idle run
1.09-1.13x slower; sleeping at once (OMP_WAIT_POLICY=PASSIVE), 1.75x. libgomp itself spins only 1,000 rounds while
it manages more OpenMP threads than there are available cores (its GOMP_SPINCOUNT documentation), and checks that at
every wait. ``SpinThrottle`` uses that: while other processes want more of the cores than the run leaves free, it
holds an idle OpenMP team of its own, enough threads to tip libgomp into the short spin, and lets it go once they
have been quiet a while. The team that computes is never touched (its size, and so every number, stays as it was).
A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT is left to rule alone. docs/performance.md, "CPU threads and sharing the
machine", has the measurements (``benchmarks/cpu_sharing.py``).
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Callable

import torch

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


OVERSUBSCRIBED_BY = 0.3
"""Cores that other processes keep busy beyond those the computing team leaves free, on average over one look, from
which waiting threads spin briefly (so that a run's own processes on one machine, each on its share, do not)."""
LOOK_EVERY_S = 0.5
"""How often ``SpinThrottle`` reads the machine's load."""
QUIET_LOOKS = 4
"""Looks in a row without oversubscription before the long spin comes back."""


class OtherLoad:
    """The cores that other processes kept busy since the last ``read`` (or since it was made): the machine's busy
    time from /proc/stat less this process's CPU time, over the wall-clock; 0 where there is no /proc/stat."""

    def __init__(self):
        self._last = self._now()

    @staticmethod
    def _now() -> tuple[float, float, float | None]:
        try:
            with open("/proc/stat") as stat:
                fields = [float(v) for v in stat.readline().split()[1:]]
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle and waiting for I/O
            busy = (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            busy = None
        return time.monotonic(), time.process_time(), busy

    def read(self) -> float:
        (wall0, own0, busy0), (wall1, own1, busy1) = self._last, self._now()
        self._last = (wall1, own1, busy1)
        if busy0 is None or busy1 is None or wall1 <= wall0:
            return 0.0
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)


def loaded_libgomp() -> ctypes.CDLL | None:
    """The libgomp this process has loaded (torch's own copy where it ships one), or None: torch computes with
    another OpenMP runtime, or none, or this is not Linux."""
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "libgomp" in line.rsplit("/", 1)[-1]), None)
    except OSError:
        return None
    return ctypes.CDLL(path) if path else None


class SpinThrottle:
    """Short spins at torch's OpenMP barriers while other processes want the cores the run computes on (the module's
    docstring says why and how). ``start`` begins looking at the load every ``LOOK_EVERY_S``; ``stop`` ends it and
    lets any held team go. ``other_load`` (cores busy outside this process since the last look) is ``OtherLoad``'s
    unless given."""

    def __init__(self, other_load: Callable[[], float] | None = None):
        self.libgomp = loaded_libgomp()
        self.other_load = other_load or OtherLoad().read
        self.holding: threading.Thread | None = None
        self._release, self._stopped = threading.Event(), threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def applies(self) -> bool:
        """Whether it can work here: libgomp loaded, and the user has not set how its threads wait."""
        user_set = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
        return self.libgomp is not None and not user_set

    def start(self) -> SpinThrottle:
        if self.applies and self._watcher is None:
            self._stopped.clear()
            self._watcher = threading.Thread(target=self._watch, name="genrl-spin-throttle", daemon=True)
            self._watcher.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        self.let_go()

    def __enter__(self) -> SpinThrottle:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _watch(self) -> None:
        quiet = 0
        while not self._stopped.wait(LOOK_EVERY_S):
            busy = self.other_load() > usable_cpus() - torch.get_num_threads() + OVERSUBSCRIBED_BY
            quiet = 0 if busy else quiet + 1
            if busy and self.holding is None:
                self.hold()
            elif quiet >= QUIET_LOOKS and self.holding is not None:
                self.let_go()

    def hold(self) -> None:
        """Make libgomp manage more threads than there are cores: a team of its own, one more than the cores, so
        that it tips whatever the computing team's size, parked until ``let_go``."""
        size = usable_cpus() + 1
        self._release.clear()
        self.holding = threading.Thread(target=self._park, args=(size,), name="genrl-spin-throttle-team", daemon=True)
        self.holding.start()

    def let_go(self) -> None:
        """libgomp frees the held team's threads as the thread that started it ends, and counts them no more."""
        if self.holding is not None:
            self._release.set()
            self.holding.join()
            self.holding = None

    def _park(self, size: int) -> None:
        # A parallel region whose every thread calls getpid (a C function that takes no argument and changes
        # nothing): afterwards the team's threads wait in this thread's pool until it ends.
        parallel = self.libgomp.GOMP_parallel
        parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        parallel(ctypes.cast(ctypes.CDLL(None).getpid, ctypes.c_void_p), None, size, 0)
        self._release.wait()
