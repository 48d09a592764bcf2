"""The per-user cache folder: what can be rebuilt, kept between runs.

`$XDG_CACHE_HOME/geoloc`, else `~/.cache/geoloc`.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_folder() -> Path:
    """Where geoloc keeps its caches for this user; read from the environment on every call, so tests can move it."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "geoloc"
