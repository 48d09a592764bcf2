"""Where each archive member lies, as sorted numpy arrays that DataLoader workers share by memory map.

A Python dict of millions of `(container, member) -> (offset, length)` tuples costs
hundreds of bytes a member in every worker, and rebuilding it from the index costs
seconds each time a worker opens a store. Here the keys (`container#member`, the uri
itself) are hashed to 64 bits with FNV-1a, sorted once, and written as `.npy` files
beside the index; a worker maps them read-only, so opening is instant and the pages
are shared. A lookup is one binary search plus a check of the actual key bytes, so
two keys with the same hash are still told apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.tables import current_umask, read_table, remove_folder

LOOKUP_SUFFIX = ".lookup"
"""The cache folder beside an index file: `mp16.parquet` -> `mp16.parquet.lookup/`, one version in it per
state of the index file."""

_FORMAT = 1
_ARRAYS = ("hash", "offset", "length", "key_start", "key_bytes")
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


def key_hash(encoded: bytes) -> int:
    """The 64-bit hash of one key's UTF-8 bytes: FNV-1a over them 8 at a time, seeded with the length."""
    value = _FNV_OFFSET ^ len(encoded)
    for start in range(0, len(encoded), 8):
        value = ((value ^ int.from_bytes(encoded[start : start + 8], "little")) * _FNV_PRIME) & _MASK
    return value


def key_hashes(data: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """`key_hash` of every key, keys being `data[starts[i]:starts[i + 1]]`: one vectorized pass per 8 bytes.

    Rows are visited longest first, so the rows still hashing at a word are a prefix; each
    word is read through an unaligned 8-byte view of the bytes, cut at the key's end.
    """
    lengths = np.diff(starts)
    order = np.argsort(-lengths, kind="stable")
    by_length = lengths[order]
    firsts = (starts[:-1] - starts[0])[order]
    padded = np.concatenate([data[starts[0] : starts[-1]], np.zeros(8, dtype=np.uint8)])
    words = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    hashes = np.uint64(_FNV_OFFSET) ^ by_length.astype(np.uint64)
    prime = np.uint64(_FNV_PRIME)
    with np.errstate(over="ignore"):
        for start in range(0, int(by_length[0]) if len(order) else 0, 8):
            active = int(np.searchsorted(-by_length, -start, side="left"))
            word = words[firsts[:active] + start]
            left = by_length[:active] - start
            short = left < 8
            word[short] &= (np.uint64(1) << (left[short].astype(np.uint64) * np.uint64(8))) - np.uint64(1)
            hashes[:active] = (hashes[:active] ^ word) * prime
    result = np.empty_like(hashes)
    result[order] = hashes
    return result


def _string_buffers(keys: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes, start offsets with the end appended) of a string column, without a row loop."""
    array = keys.to_arrow()
    if hasattr(array, "combine_chunks"):
        array = array.combine_chunks()
    array = array.cast("large_string")
    _, offsets, data = array.buffers()
    starts = np.frombuffer(offsets, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    return raw, starts


@dataclass
class MemberLookup:
    """(offset, length) by uri `container#member` for the readable members of an index.

    `folder` is where the arrays are mapped from (None: built in memory); a lookup with
    a folder pickles as that folder, so a spawned worker maps the same files.
    """

    containers: frozenset[str]
    hash: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    key_start: np.ndarray
    key_bytes: np.ndarray
    folder: Path | None = None

    @classmethod
    def build(cls, index: pl.DataFrame, separator: str) -> MemberLookup:
        """From an index frame: rows with a problem are left out; a repeated member keeps its last row."""
        containers = frozenset(index["container"].unique().to_list())
        usable = index.filter(pl.col("problem").is_null()) if "problem" in index.columns else index
        keyed = usable.select(pl.concat_str("container", pl.lit(separator), "member").alias("key"), "offset", "length")
        hashes = key_hashes(*_string_buffers(keyed["key"]))
        # Sorted by hash, then key, stably: a repeated member's rows are adjacent, the last one written last.
        keyed = keyed.with_columns(pl.Series("hash", hashes)).sort("hash", "key", maintain_order=True)
        last = (pl.col("hash") != pl.col("hash").shift(-1)) | (pl.col("key") != pl.col("key").shift(-1))
        keyed = keyed.filter(last.fill_null(True))
        key_bytes, key_start = _string_buffers(keyed["key"])
        return cls(
            containers, keyed["hash"].to_numpy(), keyed["offset"].to_numpy().astype(np.int64),
            keyed["length"].to_numpy().astype(np.int64),
            key_start - key_start[0], key_bytes[key_start[0] : key_start[-1]].copy(),
        )

    def locate(self, uri: str) -> tuple[int, int] | None:
        """(offset, length) of the member a uri names, or None when the index has no such readable member."""
        encoded = uri.encode()
        wanted = key_hash(encoded)
        position = int(self.hash.searchsorted(np.uint64(wanted)))
        while position < len(self.hash) and int(self.hash[position]) == wanted:
            start, end = int(self.key_start[position]), int(self.key_start[position + 1])
            if self.key_bytes[start:end].tobytes() == encoded:
                return int(self.offset[position]), int(self.length[position])
            position += 1
        return None

    def save(self, folder: Path, stamp: dict) -> None:
        """Written to a scratch folder and renamed to `folder`, which is never replaced once there: workers
        opening at once never see half a cache, and a builder that finishes second keeps the first one's."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            os.chmod(scratch, 0o777 & ~current_umask())  # mkdtemp makes 0700: other users' workers read it too
            for name in _ARRAYS:
                np.save(scratch / f"{name}.npy", getattr(self, name), allow_pickle=False)
            meta = {"format": _FORMAT, "containers": sorted(self.containers), **stamp}
            (scratch / "meta.json").write_text(json.dumps(meta))
            os.rename(scratch, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # another process won the race: its cache is as good
                raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> MemberLookup:
        """The arrays of a saved lookup, mapped read-only (pages shared by every process that maps them)."""
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {  # plain views of the maps: numpy's memmap subclass slows every scalar step of a lookup
            name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False).view(np.ndarray)
            for name in _ARRAYS
        }
        return cls(frozenset(meta["containers"]), **arrays, folder=folder)

    @classmethod
    def cached(cls, index_path: Path, separator: str) -> MemberLookup:
        """The lookup for an index file, built once into `<index>.lookup/<version>/` and mapped from there after.

        The version names the index file's size and modification time: a rewritten index gets a new
        folder beside the old one, which is removed once stale (never one a reader may still need:
        a cache is only ever added whole, never replaced in place).
        """
        index_path = Path(index_path)
        stamp = _stamp(index_path, separator)
        folder = _cache_folder(index_path, stamp)
        if not (folder / "meta.json").is_file():
            cls.build(read_table(index_path), separator).save(folder, stamp)
            _remove_stale_caches(index_path, separator, keep=folder)
        return cls.load(folder)

    def __reduce__(self):
        if self.folder is not None:
            return (MemberLookup.load, (self.folder,))
        return super().__reduce__()


def _stamp(index_path: Path, separator: str) -> dict:
    status = index_path.stat()
    return {"index_size": status.st_size, "index_mtime_ns": status.st_mtime_ns, "separator": separator}


def _cache_folder(index_path: Path, stamp: dict) -> Path:
    version = hashlib.blake2b(json.dumps([_FORMAT, stamp], sort_keys=True).encode(), digest_size=8).hexdigest()
    return index_path.with_name(index_path.name + LOOKUP_SUFFIX) / version


def _remove_stale_caches(index_path: Path, separator: str, keep: Path) -> None:
    """Remove the versions of earlier states of the index file: not `keep`, nor the one of its state now
    (another process may have just built it, for an index rewritten meanwhile)."""
    current = _cache_folder(index_path, _stamp(index_path, separator))
    for version in keep.parent.iterdir():
        if version.name.startswith(".") or version in (keep, current):
            continue
        if version.is_dir():
            remove_folder(version)
        else:  # a file of the single-folder layout before versions
            version.unlink(missing_ok=True)
