"""How many CPUs this process may use: what sizes thread pools and worker counts."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["usable_cpus"]

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus() -> int:
    """CPUs this process may use: affinity, then a cgroup (container) CPU quota.

    ``os.cpu_count()`` counts the machine's CPUs, which a container limited to two
    CPUs on a 64-CPU host would oversubscribe 32 times.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    quota = cgroup_quota()
    return max(1, min(count, quota) if quota else count)


def cgroup_quota(cpu_max: Path = CGROUP_CPU_MAX) -> int | None:
    """Whole CPUs allowed by a cgroup v2 quota (``cpu.max``), None without a quota."""
    try:
        limit, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(1, int(limit) // int(period))
