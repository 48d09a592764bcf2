"""Memory of the process a benchmark measures, read where Linux keeps it."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def status_mb(field: str) -> float | None:
    """A memory figure of this process from /proc/self/status (Linux), in MB; None elsewhere."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def peak_rss_mb() -> float:
    """Peak resident set of this process: VmHWM, since Linux's ru_maxrss starts a child at its parent's peak."""
    peak = status_mb("VmHWM")
    if peak is not None:
        return peak
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return round(kilobytes / 1024, 1)
