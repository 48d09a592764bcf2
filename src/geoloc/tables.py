"""Reading and writing the tables that pass between stages (CSV or Parquet by extension)."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from numpy.typing import NDArray

from geoloc.errors import InputError

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
TRUTH_LAYOUTS = [
    {"image_id": "image_id", "lat": "lat", "lon": "lon"},
    {"IMG_ID": "image_id", "LAT": "lat", "LON": "lon"},
]
"""Truth tables: our layout, or the public IM2GPS3K / YFCC4K metadata's (for select_layout)."""


class TableError(InputError):
    """A table is missing, unreadable or does not follow its documented schema."""


def table_format(path: Path) -> str:
    """'csv' or 'parquet' from the file name, or a TableError naming the accepted suffixes."""
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    accepted = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
    raise TableError(f"{path}: unknown table format {suffix or '(no suffix)'!r}; use one of {accepted}")


def table_columns(path: str | Path) -> list[str]:
    """The column names of a CSV or Parquet table, without reading its rows."""
    path = Path(path)
    kind = table_format(path)
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    try:
        return pl.read_csv(path, n_rows=0).columns if kind == "csv" else list(pl.read_parquet_schema(path))
    except (pl.exceptions.PolarsError, OSError) as error:
        raise TableError(f"{path}: cannot read as {kind}: {error}") from error


def read_table(path: str | Path, columns: list[str] | None = None) -> pl.DataFrame:
    """Read a CSV (every column as text, so ids keep their leading zeros) or a Parquet file.

    With `columns`, only those are read (a catalog of millions of rows has many more), and
    a missing one is a TableError naming what the file has.
    """
    path = Path(path)
    kind = table_format(path)
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    try:
        if columns is not None:
            present = table_columns(path)
            missing = [column for column in columns if column not in present]
            if missing:
                found = ", ".join(present) or "none"
                raise TableError(f"{path}: missing column(s) {', '.join(missing)}; found {found}")
        if kind == "csv":
            return pl.read_csv(path, infer_schema=False, columns=columns)
        return pl.read_parquet(path, columns=columns)
    except (pl.exceptions.PolarsError, OSError) as error:
        raise TableError(f"{path}: cannot read as {kind}: {error}") from error


def current_umask() -> int:
    """The process's umask: read where the OS shows it (Linux), else set and put back at once."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def replace_durably(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temporary)` beside `path`, then flushed to disk, renamed over `path`, and the rename flushed too.

    A reader sees the old file or the whole new one, never a part, even after a power cut:
    without the fsyncs a rename may reach the disk before the data it points to. The file's
    permissions follow the umask, as a file created in place would.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes 0600: an output is shared like any file
        _fsync(temporary, os.O_RDONLY)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def replace_folder_durably(folder: Path, write: Callable[[Path], None]) -> None:
    """`write(partial)` fills a new folder beside `folder`; its files are flushed, then it is swapped in whole
    (`replace_folder`).

    A write killed at any point leaves the previous folder whole or the new one (and at worst a
    hidden `.NAME.PID.*` folder to delete); the files of two writes are never mixed.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    restore_folder(folder)
    partial = folder.parent / f".{folder.name}.{os.getpid()}.part"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        write(partial)
        for written in sorted(partial.rglob("*"), reverse=True):
            _fsync(written, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if written.is_dir() else 0))
        sync_directory(partial)
        replace_folder(partial, folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
"""renameat2's flag (Linux 3.15+, glibc 2.28+); macOS's renamex_np calls the same swap RENAME_SWAP, also 2."""


def exchange_paths(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`, macOS
    `renamex_np(RENAME_SWAP)`); False where the OS or the file system has no such step."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        result = libc.renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        result = libc.renamex_np(os.fsencode(first), os.fsencode(second), _RENAME_EXCHANGE)
    else:
        return False
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def replace_folder(new: Path, folder: Path) -> None:
    """Put the folder `new` at `folder`, whose old content (if any) is then deleted; `new` is gone after.

    With an atomic exchange, a reader (or a crash at any point) finds the old folder or the new one,
    whole. Where the OS has none (Windows, some network file systems), two renames: the old folder
    is moved to `.NAME.PID.old` first and moved back if the second rename fails; a crash between the
    two leaves it there, and `restore_folder` puts it back.
    """
    if not folder.exists():
        os.replace(new, folder)
        sync_directory(folder.parent)
        return
    if exchange_paths(new, folder):
        old = new
    else:
        old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
        os.replace(folder, old)
        try:
            os.replace(new, folder)
        except BaseException:
            os.replace(old, folder)
            raise
    sync_directory(folder.parent)
    remove_folder(old)


def restore_folder(folder: Path) -> None:
    """Put back the folder a `replace_folder` without atomic exchange moved aside, if a crash left it there."""
    if folder.exists():
        return
    moved = sorted(folder.parent.glob(f".{glob.escape(folder.name)}.*.old"), key=lambda path: path.stat().st_mtime)
    for previous in reversed(moved):
        with contextlib.suppress(OSError):
            os.rename(previous, folder)
            return


def remove_folder(folder: Path) -> None:
    """Remove a folder that another process may be removing too: renamed away first, so only one does."""
    removing = folder.with_name(f".{folder.name}.{os.getpid()}.removing")
    try:
        folder.rename(removing)
    except FileNotFoundError:
        return
    shutil.rmtree(removing)


def sync_directory(folder: Path) -> None:
    """Flush a folder's entries (renames into it, files created in it) to disk."""
    _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_table(frame: pl.DataFrame, path: str | Path) -> None:
    """Write atomically and durably (see `replace_durably`)."""
    path = Path(path)
    if table_format(path) == "csv":
        replace_durably(path, frame.write_csv)
    else:
        replace_durably(path, frame.write_parquet)


def write_text(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file atomically and durably (see `replace_durably`)."""
    replace_durably(Path(path), lambda temporary: temporary.write_text(text, encoding="utf-8"))


def select_layout(frame: pl.DataFrame, path: Path, layouts: list[dict[str, str]]) -> pl.DataFrame:
    """The columns of the first layout (source name -> our name) that the frame has, renamed.

    Lets one loader accept the public benchmark metadata (IMG_ID, LAT, LON) as well as
    our own schema, with an error that names every accepted layout otherwise.
    """
    for layout in layouts:
        if set(layout) <= set(frame.columns):
            return frame.select(pl.col(old).alias(new) for old, new in layout.items())
    expected = " or ".join("(" + ", ".join(layout) + ")" for layout in layouts)
    raise TableError(f"{path}: expected columns {expected}; found {', '.join(frame.columns) or 'none'}")


def as_float_column(frame: pl.DataFrame, column: str, id_column: str, path: Path) -> pl.DataFrame:
    """Cast a column to float64; text that is not a number is an error naming the rows' ids.

    Empty cells become null (a missing value), never zero.
    """
    values = frame[column]
    if values.dtype == pl.Float64:
        return frame
    if values.dtype == pl.Utf8:
        values = values.str.strip_chars().replace("", None)
    cast = values.cast(pl.Float64, strict=False)
    broken = values.is_not_null() & cast.is_null()
    if broken.any():
        bad = frame.filter(broken)
        examples = ", ".join(
            f"{row_id}={value!r}" for row_id, value in zip(bad[id_column].head(5), values.filter(broken).head(5))
        )
        raise TableError(f"{path}: {broken.sum()} value(s) in column {column!r} are not numbers: {examples}")
    return frame.with_columns(cast.alias(column))


def describe_ids(ids: pl.Series, limit: int = 5) -> str:
    """A short list of ids for an error message: the first few and how many more."""
    shown = ", ".join(repr(value) for value in ids.head(limit).to_list())
    more = len(ids) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def ids_digest(ids: pl.Series) -> str:
    """A fingerprint of a list of ids that every version of every library computes alike (polars' own
    `Series.hash` may change between versions): SHA-256, in hex, over the id count, each id's UTF-8 length
    (all three as 8-byte little-endian integers) and then the ids' UTF-8 bytes, in order."""
    if ids.null_count():
        raise TableError(f"{ids.null_count()} id(s) are missing; every row needs an id")
    arrow = ids.cast(pl.Utf8).rechunk().to_arrow().cast(pa.large_string())
    offsets = np.frombuffer(arrow.buffers()[1], dtype=np.int64)[arrow.offset:arrow.offset + len(arrow) + 1]
    digest = hashlib.sha256(np.uint64(len(arrow)).astype("<u8").tobytes())
    digest.update(np.diff(offsets).astype("<u8").tobytes())
    if len(arrow):
        digest.update(memoryview(arrow.buffers()[2])[offsets[0]:offsets[-1]])
    return digest.hexdigest()


def rows_of(keys: pl.Series, ids: pl.Series) -> NDArray[np.int64]:
    """The row of each key among `ids` (its first, where an id repeats), -1 where a key is null or unknown."""
    table = pl.DataFrame({"key": ids, "row": np.arange(len(ids), dtype=np.int64)}).unique("key", keep="first")
    return (pl.DataFrame({"key": keys}).join(table, on="key", how="left", maintain_order="left")["row"]
            .fill_null(-1).to_numpy())


IN_MEMORY = ":memory:"
"""SQLite's name for a database that lives in memory only: no file is made for it."""


def open_answer_cache(path: Path, *tables: str) -> sqlite3.Connection:
    """An SQLite file of answers already paid for (API calls), created with `tables` (CREATE statements).

    WAL journaling: every committed answer survives a kill -9, and a reader may look while a run writes.
    The answers tie photos to places, so the file is its owner's alone (0600, SQLite gives its journal
    files the same mode), whatever the umask, and a folder made for it is 0700.
    """
    if str(path) != IN_MEMORY:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(path, 0o600)  # a cache made world-readable by an earlier version is closed too
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    for statement in tables:
        connection.execute(statement)
    connection.commit()
    return connection
