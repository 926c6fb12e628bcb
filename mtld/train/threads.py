"""How many intra-op threads a CPU run uses while other programs want the cores too.

torch starts one OpenMP thread per core, and OpenMP threads spin while they
wait for each other. Alone on the machine that is fastest; with another
program busy on one of the cores, the spinning threads fight it for the core
and a run slows down three to five times (`python -m bench.threads`). So every
few seconds the governor measures how many cores' worth of CPU time *other*
processes used (the machine's busy time less this process's own) and sets
torch's thread count to the cores left free, between steps, never above the
count the run started with. A new count is taken only when two checks in a row
agree, so one busy moment does not flip it.

Off when the thread count is pinned (`train.threads = N`, or OMP_NUM_THREADS
in the environment) and on GPUs (the CPU only feeds them). On a Ray cluster,
Ray sets OMP_NUM_THREADS to the run's `num_cpus` (ray/_private/utils.py,
set_omp_num_threads_if_unset): the Ray executor marks that with
ALLOTTED_ENV, and the count is then the governor's ceiling, not a pin (a node's
cores may be busy with Ray's own processes or other programs too). Changing the
count changes the order of floating-point sums, so a resumed run is
bit-identical only with a pinned count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from mtld.runs.child import ALLOTTED_ENV

CHECK_EVERY_S = 2.0


class CpuTimes(NamedTuple):
    wall: float
    machine_busy: float  # CPU-seconds of every process on the machine
    own: float  # CPU-seconds of this process (all its threads)


def read_cpu_times(wall: float) -> CpuTimes:
    import psutil

    machine = psutil.cpu_times()
    idle = machine.idle + getattr(machine, "iowait", 0.0) + getattr(machine, "steal", 0.0)
    mine = psutil.Process().cpu_times()
    return CpuTimes(wall, sum(machine) - idle - getattr(machine, "guest", 0.0) - getattr(machine, "guest_nice", 0.0),
                    mine.user + mine.system)


def others_busy(before: CpuTimes, after: CpuTimes) -> float:
    """Cores' worth of CPU that other processes used between two readings."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    return max((after.machine_busy - before.machine_busy) - (after.own - before.own), 0.0) / wall


def target_threads(ceiling: int, cores: int, others: float) -> int:
    """The cores other processes leave free, scaled to this run's ceiling; at least one."""
    free = max(cores - others, 0.0)
    return max(1, min(ceiling, math.floor(free * ceiling / cores + 0.5)))


class ThreadGovernor:
    def __init__(self, ceiling: int, *, log: Any, cores: int | None = None, every_s: float = CHECK_EVERY_S,
                 read: Callable[[float], CpuTimes] = read_cpu_times, set_threads: Callable[[int], None] | None = None):
        import torch

        self.ceiling, self.current = ceiling, ceiling
        self.cores = cores or os.cpu_count() or ceiling
        self.every_s, self.read, self.log = every_s, read, log
        self.set_threads = set_threads or torch.set_num_threads
        self.last: CpuTimes | None = None
        self.proposed: int | None = None

    def check(self, now: float) -> None:
        """Between steps: cheap unless `every_s` has passed since the last reading."""
        if self.last is not None and now - self.last.wall < self.every_s:
            return
        reading = self.read(now)
        before, self.last = self.last, reading
        if before is None:
            return
        others = others_busy(before, reading)
        target = target_threads(self.ceiling, self.cores, others)
        if target == self.current:
            self.proposed = None
        elif target != self.proposed:
            self.proposed = target  # a second check must agree
        else:
            self.log.info("threads.changed", **{"from": self.current, "to": target}, others_busy=round(others, 2))
            self.set_threads(target)
            self.current, self.proposed = target, None


class FixedThreads:
    """The governor's stand-in when the count is pinned or the run is on a GPU."""

    def check(self, now: float) -> None:
        return None


def thread_policy(setting: int | str, device_type: str, *, log: Any, every_s: float = CHECK_EVERY_S) -> ThreadGovernor | FixedThreads:
    """Apply `train.threads` to this process: a number pins it; "auto" governs it on a CPU run
    unless OMP_NUM_THREADS already pins it (Ray's allotment does not: it is the ceiling)."""
    import torch

    if setting != "auto":
        torch.set_num_threads(int(setting))
        return FixedThreads()
    pinned = os.environ.get("OMP_NUM_THREADS") and os.environ.get(ALLOTTED_ENV) != "1"
    if device_type != "cpu" or pinned:
        return FixedThreads()
    return ThreadGovernor(torch.get_num_threads(), log=log, every_s=every_s)
