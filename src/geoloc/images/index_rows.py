"""The offset index's rows: one per member of an archive (shard, tar, zip), with its hash and header check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

import polars as pl
import xxhash

from geoloc.errors import InputError
from geoloc.images.exif import CORRUPT_IMAGE, read_header

INDEX_SCHEMA = {
    "container": pl.Utf8,
    "member": pl.Utf8,
    "offset": pl.Int64,
    "length": pl.Int64,
    "content_hash": pl.Utf8,
    "format": pl.Utf8,
    "problem": pl.Utf8,
    "detail": pl.Utf8,
}
"""One row per member; `problem` is null for a readable image, CORRUPT_IMAGE otherwise."""


class ArchiveError(InputError):
    """A container or its index cannot be used."""


def content_hash(data: bytes) -> str:
    """The key under which identical photo bytes are recognized across sources (XXH3, 128 bits)."""
    return xxhash.xxh3_128_hexdigest(data)


@dataclass
class IndexRows:
    """The index rows of one container, gathered column by column."""

    container: str
    rows: dict[str, list]

    @classmethod
    def empty(cls, container: str) -> IndexRows:
        return cls(container, {name: [] for name in INDEX_SCHEMA})

    def add(self, member: str, offset: int, length: int, data: bytes | None, detail: str | None = None,
            check: bool = True) -> None:
        """A member; `data` None means unreadable (with `detail`); `check` hashes and sniffs the bytes."""
        if data is None:
            values = (None, None, CORRUPT_IMAGE, detail)
        elif not check:
            values = (None, None, None, None)
        else:
            header = read_header(data, want_gps=False)
            values = (content_hash(data), header.format, header.problem, header.detail)
        for name, value in zip(INDEX_SCHEMA, (self.container, member, offset, length, *values)):
            self.rows[name].append(value)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.rows, schema=INDEX_SCHEMA)


def read_span(handle: BinaryIO, offset: int, length: int) -> bytes:
    """`length` bytes of an open container from `offset` (a member's place in its index); a short read is an
    error."""
    handle.seek(offset)
    data = handle.read(length)
    if len(data) != length:
        raise ArchiveError(f"{handle.name}: member at {offset} is cut short ({len(data)} of {length} bytes)")
    return data
