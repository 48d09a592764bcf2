"""Ways to kill a Ray worker on purpose, once: the first call creates a marker file and exits the process.

Imported by Ray's worker processes (tests/ is on their PYTHONPATH), so these live in
a module of their own rather than in a test file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geoloc.encode import ReadBytes
from geoloc.encode.backbone import Backbone
from geoloc.encode.loading import load_backbone


def crash_once(marker: str) -> None:
    """Kill this process (no cleanup, as a crash or the OOM killer would) unless `marker` exists."""
    path = Path(marker)
    if not path.exists():
        path.touch()
        os._exit(1)


def crashing_once(marker: str, function: Callable[..., Any], *arguments: Any) -> Any:
    """`function(*arguments)`, after killing the process the first time anything calls it."""
    crash_once(marker)
    return function(*arguments)


class CrashingRead:
    """A ReadBytes that kills its process on its first photo."""

    def __init__(self, read_bytes: ReadBytes, marker: str) -> None:
        self.read_bytes, self.marker = read_bytes, marker

    def __call__(self, source: str, uri: str) -> bytes:
        crash_once(self.marker)
        return self.read_bytes(source, uri)


def crashing_backbone(marker: str, name: str) -> Backbone:
    """The backbone on the CPU, whose first forward pass kills the actor holding it."""
    backbone = load_backbone(name, device="cpu")
    features = backbone.features
    backbone.features = lambda pixel_values: crashing_once(marker, features, pixel_values)
    return backbone
