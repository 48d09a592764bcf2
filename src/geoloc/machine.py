"""How many CPUs and how much memory this process may use, on any OS and in any container.

`os.cpu_count()` counts the machine's cores, not the ones a process may run on: the
affinity mask (`taskset`, Slurm) and a container's CPU quota (Docker `--cpus`,
Kubernetes limits, both cgroup quotas) give fewer, and `/proc/meminfo` knows nothing of
a container's memory limit, past which the kernel kills the process. Every stage that
sizes a pool of threads or processes, or checks that a build fits in memory, asks here.

cgroup v2 (`cpu.max`, `memory.max`, `memory.current`) and v1 (`cpu.cfs_quota_us` and
`cpu.cfs_period_us`, `memory.limit_in_bytes`, `memory.usage_in_bytes`) are read at every
level from the process's own cgroup (`/proc/self/cgroup`) up to the mount root; the
tightest level counts. Where a file is absent (macOS, Windows, no cgroup) it sets no limit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath

CGROUP_ROOT = Path("/sys/fs/cgroup")
"""Where the cgroup file systems are mounted (v2 at the root, v1 one folder per controller)."""

PROC_SELF_CGROUP = Path("/proc/self/cgroup")
"""This process's cgroup in each hierarchy: `0::/path` (v2) or `N:cpu,cpuacct:/path` (v1)."""

MEMINFO = Path("/proc/meminfo")

_NO_LIMIT_V1 = 1 << 60
"""cgroup v1 writes 'no memory limit' as a number near 2**63 rounded to pages; anything above this is none."""


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def _cgroup_paths() -> dict[str, PurePosixPath]:
    """The process's cgroup per controller ('' for the v2 unified hierarchy)."""
    paths: dict[str, PurePosixPath] = {}
    for line in (_read(PROC_SELF_CGROUP) or "").splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = PurePosixPath(path)
    return paths


def _levels(mount: Path, own: PurePosixPath | None) -> list[Path]:
    """The cgroup folders from the process's own up to the mount root, those that this view shows."""
    chain = [own, *own.parents] if own is not None else []
    levels = [mount / str(path).lstrip("/") for path in chain] + [mount]
    return [level for level in dict.fromkeys(levels) if level.is_dir()]


def _cpu_quota() -> float | None:
    """CPUs the cgroup quota allows (fractional), or None without a quota."""
    paths = _cgroup_paths()
    quotas = []
    for level in _levels(CGROUP_ROOT, paths.get("")):
        parts = (_read(level / "cpu.max") or "").split()
        if len(parts) == 2 and parts[0] != "max":
            quotas.append(int(parts[0]) / int(parts[1]))
    for level in _levels(CGROUP_ROOT / "cpu", paths.get("cpu")):
        quota, period = _read(level / "cpu.cfs_quota_us"), _read(level / "cpu.cfs_period_us")
        if quota and period and int(quota) > 0 and int(period) > 0:
            quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def cpu_count() -> int:
    """CPUs this process may use: its affinity mask where the OS has one (else all cores), within the
    cgroup CPU quota rounded up; at least 1."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    quota = _cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _memory_headroom() -> int | None:
    """Bytes the cgroup memory limit still allows (limit minus what the cgroup uses), or None without a limit."""
    paths = _cgroup_paths()
    headroom = []
    for mount, own, limit_file, usage_file in (
        (CGROUP_ROOT, paths.get(""), "memory.max", "memory.current"),
        (CGROUP_ROOT / "memory", paths.get("memory"), "memory.limit_in_bytes", "memory.usage_in_bytes"),
    ):
        for level in _levels(mount, own):
            limit = _read(level / limit_file)
            if limit is None or not limit.isdigit() or int(limit) >= _NO_LIMIT_V1:
                continue
            usage = _read(level / usage_file)
            headroom.append(max(0, int(limit) - (int(usage) if usage and usage.isdigit() else 0)))
    return min(headroom) if headroom else None


def _system_available() -> int:
    """MemAvailable where /proc/meminfo exists, else the physical memory."""
    for line in (_read(MEMINFO) or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_memory() -> int:
    """Bytes this process can take now: the machine's available memory, within its cgroup's limit."""
    system = _system_available()
    headroom = _memory_headroom()
    return system if headroom is None else min(system, headroom)
