"""Checking image files on disk in parallel: present, readable header, content hash, EXIF GPS."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from geoloc.images import CORRUPT_IMAGE, OUTSIDE_ROOT, OutsideRootError, content_hash, read_header, resolve_below
from geoloc.resumable import Executor, Task, cache_key, run_cached

MISSING_IMAGE = "missing_image"

SCAN_SCHEMA = {
    "uri": pl.Utf8,
    "content_hash": pl.Utf8,
    "lat": pl.Float64,
    "lon": pl.Float64,
    "problem": pl.Utf8,
    "detail": pl.Utf8,
}
"""One row per file: `problem` is null, OUTSIDE_ROOT, MISSING_IMAGE, CORRUPT_IMAGE or one of GPS_PROBLEMS."""

SCAN_VERSION = 2
"""Part of every chunk's cache key: bumped when the checks change (2: uris outside the root refused)."""

CHUNK_FILES = 2000
"""Files per task: big enough that process hand-over costs nothing per file."""

def inspect_files(root: str, uris: Sequence[str], want_gps: bool) -> pl.DataFrame:
    """Each file read once: hashed, its header checked and, if asked, its GPS read."""
    columns: dict[str, list] = {name: [] for name in SCAN_SCHEMA}
    for uri in uris:
        content, lat, lon, problem, detail = None, None, None, None, None
        try:
            data = resolve_below(Path(root), uri).read_bytes()
        except OutsideRootError as error:
            problem, detail = OUTSIDE_ROOT, str(error)
        except FileNotFoundError:
            problem, detail = MISSING_IMAGE, "no such file"
        except OSError as error:
            problem, detail = CORRUPT_IMAGE, f"unreadable: {error.strerror or error}"
        else:
            content = content_hash(data)
            header = read_header(data, want_gps)
            lat, lon, problem, detail = header.lat, header.lon, header.problem, header.detail
        for name, value in zip(SCAN_SCHEMA, (uri, content, lat, lon, problem, detail)):
            columns[name].append(value)
    return pl.DataFrame(columns, schema=SCAN_SCHEMA)


def scan_files(root: Path, uris: Sequence[str], want_gps: bool, cache_dir: Path, workers: Executor, label: str,
               chunk_files: int = CHUNK_FILES) -> pl.DataFrame:
    """inspect_files over all `uris` in resumable chunks spread over the workers."""
    chunks = [list(uris[start:start + chunk_files]) for start in range(0, len(uris), chunk_files)]
    tasks = [
        Task(cache_key(SCAN_VERSION, root.resolve(), want_gps, *chunk), inspect_files, (str(root), chunk, want_gps))
        for chunk in chunks
    ]
    frames = run_cached(tasks, cache_dir, workers, label)
    return pl.concat(frames) if frames else pl.DataFrame(schema=SCAN_SCHEMA)
