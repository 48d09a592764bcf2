"""Checking image files on disk in parallel: present, readable header, content hash, EXIF GPS."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from geoloc.images import CORRUPT_IMAGE, OUTSIDE_ROOT, OutsideRootError, RootFolder, content_hash, read_header
from geoloc.resumable import Executor, Task, cache_key, run_cached

MISSING_IMAGE = "missing_image"
BAD_URI = "bad_uri"
"""Quarantine reason of a row whose path cannot name a file: empty, with a NUL byte, or not valid UTF-8."""

SCAN_SCHEMA = {
    "uri": pl.Utf8,
    "content_hash": pl.Utf8,
    "lat": pl.Float64,
    "lon": pl.Float64,
    "problem": pl.Utf8,
    "detail": pl.Utf8,
}
"""One row per file: `problem` is null, BAD_URI, OUTSIDE_ROOT, MISSING_IMAGE, CORRUPT_IMAGE or one of GPS_PROBLEMS."""

SCAN_VERSION = 2
"""Part of every chunk's cache key: bumped when the checks change (2: uris outside the root refused)."""

CHUNK_FILES = 2000
"""Files per task: big enough that process hand-over costs nothing per file."""

def inspect_files(root: str, uris: Sequence[str], want_gps: bool) -> pl.DataFrame:
    """Each file read once: hashed, its header checked and, if asked, its GPS read."""
    columns: dict[str, list] = {name: [] for name in SCAN_SCHEMA}
    folder = RootFolder(root)
    for uri in uris:
        content, lat, lon, problem, detail = None, None, None, None, None
        try:
            data = folder.read_bytes(uri)
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


def _as_text(uris: Sequence[str | None]) -> tuple[pl.Series, list[str]]:
    """The uris as a text column, and (shown with backslash escapes) the file names that are not valid UTF-8.

    A file system may hold names in any bytes; a Parquet text column holds UTF-8 only. All names are
    checked in one pass, one by one only when that pass finds a bad one.
    """
    try:
        return pl.Series("uri", uris, dtype=pl.Utf8), []
    except UnicodeEncodeError:
        def encodable(uri: str | None) -> bool:
            try:
                (uri or "").encode()
            except UnicodeEncodeError:
                return False
            return True

        good = [uri for uri in uris if encodable(uri)]
        bad = [uri.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
               for uri in uris if not encodable(uri)]
        return pl.Series("uri", good, dtype=pl.Utf8), bad


def malformed_uri(uris: pl.Expr, what: str = "path") -> pl.Expr:
    """Why a uri (or the `what` it is made from) cannot name a file, null when it can: an empty cell, or a
    NUL byte (no OS path holds one)."""
    return (pl.when(uris.is_null() | (uris == "")).then(pl.lit(f"empty {what} cell"))
            .when(uris.str.contains("\x00", literal=True)).then(pl.lit(f"a NUL byte in the {what}")))


def scan_files(root: Path, uris: Sequence[str | None], want_gps: bool, cache_dir: Path, workers: Executor,
               label: str, chunk_files: int = CHUNK_FILES) -> pl.DataFrame:
    """inspect_files over all `uris` in resumable chunks spread over the workers; a malformed uri is
    refused as BAD_URI without touching the disk."""
    text, unencodable = _as_text(uris)
    checked = pl.DataFrame({"uri": text}).with_columns(malformed_uri(pl.col("uri")).alias("detail"))
    refused = pl.concat([
        checked.filter(pl.col("detail").is_not_null()),
        pl.DataFrame({"uri": unencodable, "detail": ["file name is not valid UTF-8"] * len(unencodable)},
                     schema={"uri": pl.Utf8, "detail": pl.Utf8}),
    ]).with_columns(pl.lit(BAD_URI).alias("problem"))
    usable = checked.filter(pl.col("detail").is_null())["uri"].to_list()
    chunks = [usable[start:start + chunk_files] for start in range(0, len(usable), chunk_files)]
    tasks = [
        Task(cache_key(SCAN_VERSION, root.resolve(), want_gps, *chunk), inspect_files, (str(root), chunk, want_gps))
        for chunk in chunks
    ]
    frames = run_cached(tasks, cache_dir, workers, label)
    return pl.concat([*frames, refused], how="diagonal_relaxed").select(
        pl.col(name).cast(dtype) for name, dtype in SCAN_SCHEMA.items())
