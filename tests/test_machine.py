"""CPUs and memory a process may use: affinity where the OS has it, cgroup v2 / v1 quotas and limits."""

import os
from pathlib import Path

import numpy as np
import pytest

from geoloc import machine
from geoloc.geo import great_circle_km


@pytest.fixture
def cgroups(tmp_path, monkeypatch):
    """An empty cgroup mount and /proc/self/cgroup that the test fills in."""
    root, own = tmp_path / "cgroup", tmp_path / "self-cgroup"
    root.mkdir()
    own.write_text("0::/\n")
    monkeypatch.setattr(machine, "CGROUP_ROOT", root)
    monkeypatch.setattr(machine, "PROC_SELF_CGROUP", own)
    monkeypatch.setattr(machine, "MEMINFO", tmp_path / "meminfo")
    (tmp_path / "meminfo").write_text("MemTotal:       64000000 kB\nMemAvailable:   32000000 kB\n")
    return root, own


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_without_sched_getaffinity_the_cores_are_counted_and_distances_work(cgroups, monkeypatch):
    """macOS and Windows have no os.sched_getaffinity: distances over many blocks still run on every core."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert machine.cpu_count() == 6
    lat = np.linspace(-80, 80, 300_000)
    distances = great_circle_km(lat, np.zeros_like(lat), lat, np.ones_like(lat))
    assert distances.shape == lat.shape and np.all(distances > 0)


def test_affinity_mask_is_used_where_it_exists(cgroups, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert machine.cpu_count() == 3


def test_cgroup_v2_cpu_quota_rounds_up_and_caps_the_cores(cgroups, monkeypatch):
    root, own = cgroups
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    own.write_text("0::/job/step\n")
    write(root / "cpu.max", "max 100000")
    write(root / "job" / "cpu.max", "250000 100000")  # --cpus 2.5 on the parent
    write(root / "job" / "step" / "cpu.max", "max 100000")
    assert machine.cpu_count() == 3


def test_cgroup_v1_cpu_quota(cgroups, monkeypatch):
    root, own = cgroups
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    own.write_text("4:memory:/\n2:cpu,cpuacct:/docker/abc\n")
    write(root / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "50000")
    write(root / "cpu" / "docker" / "abc" / "cpu.cfs_period_us", "100000")
    assert machine.cpu_count() == 1
    write(root / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "-1")
    assert machine.cpu_count() == 16


def test_memory_is_what_the_cgroup_limit_leaves(cgroups):
    root, own = cgroups
    assert machine.available_memory() == 32_000_000 * 1024  # no limit: MemAvailable
    own.write_text("0::/pod\n")
    write(root / "pod" / "memory.max", str(8 << 30))
    write(root / "pod" / "memory.current", str(3 << 30))
    assert machine.available_memory() == 5 << 30
    write(root / "pod" / "memory.max", "max")
    assert machine.available_memory() == 32_000_000 * 1024


def test_cgroup_v1_memory_limit_of_an_ancestor_counts(cgroups):
    root, own = cgroups
    own.write_text("4:memory:/batch/job7\n")
    write(root / "memory" / "batch" / "memory.limit_in_bytes", str(4 << 30))
    write(root / "memory" / "batch" / "memory.usage_in_bytes", str(1 << 30))
    write(root / "memory" / "batch" / "job7" / "memory.limit_in_bytes", "9223372036854771712")  # no limit
    assert machine.available_memory() == 3 << 30
