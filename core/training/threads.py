"""How many CPU threads torch should use: the cores that are free, not the cores that exist.

torch's OpenMP threads busy-wait ("spin") at every parallel region's barrier for a while before sleeping. With more
threads than free cores, each barrier waits for a thread the scheduler has parked behind another process, and the
spinning threads burn the time slices that thread needed: on a busy machine a step gets many times slower, not just
proportionally slower (bench/cpu_threads.py measures it). So the trainer asks for the free cores: the cores this
process may run on (CPU affinity and a cgroup CPU quota, as on container pods) minus the load the other processes put
on them (the 1-minute load average, less our own threads), at least 1, and re-checks every RECHECK_S seconds while
training, since pods start a second job (preprocessing, a queued run) beside a running one. `threads` in the config
overrides it; an explicit OMP_NUM_THREADS caps it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

RECHECK_S = 30.0


def allowed_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2/v1 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def _env_cap() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def free_cores(own_threads: int = 0, load: float | None = None, allowed: int | None = None) -> int:
    """Free cores now: allowed cores minus the others' load (the load average less `own_threads` of ours), >= 1."""
    allowed = allowed_cores() if allowed is None else allowed
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    others = max(0.0, load - own_threads)
    free = max(1, min(allowed, int(allowed - others + 0.5)))
    cap = _env_cap()
    return min(free, cap) if cap else free


class ThreadChoice:
    """Sets torch's thread count from `configured` (> 0: fixed) or from the free cores (0), and re-checks the free
    cores every RECHECK_S seconds when automatic."""

    def __init__(self, configured: int = 0, clock=time.monotonic) -> None:
        self.configured = int(configured)
        self.clock = clock
        self.threads = 0
        self._checked = 0.0

    def apply(self) -> int:
        import torch

        n = self.configured if self.configured > 0 else free_cores(own_threads=self._busy_own())
        if n != self.threads:
            torch.set_num_threads(n)
            self.threads = n
        self._checked = self.clock()
        return n

    def _busy_own(self) -> int:
        return self.threads  # our threads were running during the last minute's load

    def tick(self) -> int:
        """Between steps: re-check when automatic and RECHECK_S has passed. Returns the thread count."""
        if self.configured <= 0 and self.clock() - self._checked >= RECHECK_S:
            return self.apply()
        return self.threads
