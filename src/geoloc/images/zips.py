"""Photos inside zip files (OpenStreetView-5M's `images/{train,test}/NN.zip`), read in place.

The central directory says where each member's local header lies; the index keeps, per
member, the span from that header to the end of its data. Reading a member is then one
seek and one read of that span: the header gives the data's start and its compression
(stored, as photo zips usually are, or deflated), so nothing is ever unpacked to disk and
the zip's directory is never parsed again.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import polars as pl

from geoloc.images.index_rows import ArchiveError, IndexRows, read_span

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_SIGNATURE = b"PK\x03\x04"
_STORED, _DEFLATED = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
_ENCRYPTED_FLAG = 0x1

UNREADABLE_ZIP = "@zip"
"""The member name of the one index row a zip without a readable directory gets."""


def member_bytes(span: bytes, where: str) -> bytes:
    """The uncompressed bytes of a member from its span (local header, name, extra field, data)."""
    if len(span) < _LOCAL_HEADER.size:
        raise ArchiveError(f"{where}: cut short ({len(span)} bytes, no local header)")
    signature, _, flags, method, _, _, _, _, _, name_length, extra_length = _LOCAL_HEADER.unpack_from(span)
    if signature != _LOCAL_SIGNATURE:
        raise ArchiveError(f"{where}: no zip local header at this offset")
    if flags & _ENCRYPTED_FLAG:
        raise ArchiveError(f"{where}: encrypted")
    data = span[_LOCAL_HEADER.size + name_length + extra_length:]
    if method == _STORED:
        return data
    if method == _DEFLATED:
        try:
            return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
        except zlib.error as error:
            raise ArchiveError(f"{where}: deflated data unreadable: {error}") from error
    raise ArchiveError(f"{where}: compression method {method} (only stored and deflated are read)")


def _member_span(handle, info: zipfile.ZipInfo) -> tuple[int, int]:
    """(offset, length) of a member's local header through the end of its data."""
    handle.seek(info.header_offset)
    header = handle.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size:
        raise ArchiveError("local header past the end of the file")
    fields = _LOCAL_HEADER.unpack(header)
    return info.header_offset, _LOCAL_HEADER.size + fields[9] + fields[10] + info.compress_size


def index_zip(path: Path | str, name: str | None = None) -> pl.DataFrame:
    """Index the files of a zip: each member read once, its CRC checked, hashed and its header sniffed.

    A member whose bytes are cut short, fail their CRC or cannot be decompressed is one
    CORRUPT_IMAGE row; a zip whose directory cannot be read is a single `@zip` row.
    """
    path = Path(path)
    rows = IndexRows.empty(name or path.name)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        rows.add(UNREADABLE_ZIP, 0, path.stat().st_size, None, f"not a readable zip: {error}")
        return rows.frame()
    with archive, path.open("rb") as handle:
        for info in archive.infolist():
            if info.is_dir():
                continue
            offset, length = info.header_offset, 0
            try:
                offset, length = _member_span(handle, info)
                handle.seek(offset)
                data = member_bytes(handle.read(length), info.filename)
                if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
                    raise ArchiveError(f"{info.filename}: bytes differ from the zip's record (size or CRC)")
            except ArchiveError as error:
                rows.add(info.filename, offset, length, None, str(error))
            else:
                rows.add(info.filename, offset, length, data)
    return rows.frame()


def read_zip_member(handle: BinaryIO, offset: int, length: int) -> bytes:
    """The bytes of a zip member whose span the index gives, from the open zip."""
    return member_bytes(read_span(handle, offset, length), f"{handle.name}@{offset}")
