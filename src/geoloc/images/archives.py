"""Images inside MessagePack shards and tar archives, read in place through an offset index.

One streaming pass over a container yields an index row per member (name, byte offset,
length, content hash, header check); the index is kept in Parquet, after which any
member is one seek and one read away, with nothing unpacked to disk.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import msgpack
import polars as pl
import xxhash

from geoloc.images.exif import CORRUPT_IMAGE, read_header

MEMBER_SEPARATOR = "#"
"""A catalog uri `container#member` names a member of a shard or tar, relative to the dataset root."""

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

_MAX_RECORD_BYTES = 512 * 1024 * 1024
_READ_BYTES = 16 * 1024 * 1024


class ArchiveError(ValueError):
    """A container or its index cannot be used."""


def content_hash(data: bytes) -> str:
    """The key under which identical photo bytes are recognized across sources (XXH3, 128 bits)."""
    return xxhash.xxh3_128_hexdigest(data)


@dataclass
class _IndexRows:
    container: str
    rows: dict[str, list]

    @classmethod
    def empty(cls, container: str) -> _IndexRows:
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


def index_shard(path: Path, name: str | None = None, check_images: bool = True) -> pl.DataFrame:
    """Index a shard of MessagePack maps with `id` and `image` (bytes) in one streaming pass.

    With `check_images` each image is also hashed and its header sniffed (what the
    catalog needs); without, the pass only records where each record lies.
    A truncated last record, or bytes that stop being MessagePack, lose what they cover
    only: they appear as one CORRUPT_IMAGE row named `@<offset>`, the records before stay.
    """
    rows = _IndexRows.empty(name or path.name)
    size = path.stat().st_size
    with path.open("rb") as handle:
        unpacker = msgpack.Unpacker(handle, raw=False, max_buffer_size=_MAX_RECORD_BYTES, read_size=_READ_BYTES)
        while True:
            offset = unpacker.tell()
            try:
                member, image = _next_record(unpacker, check_images)
            except msgpack.OutOfData:
                if offset < size:
                    rows.add(f"@{offset}", offset, size - offset, None, "truncated record at the end of the shard")
                break
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as error:
                rows.add(f"@{offset}", offset, size - offset, None, f"unreadable from here on: {error}")
                break
            length = unpacker.tell() - offset
            if not isinstance(member, str) or image is None:
                rows.add(f"@{offset}", offset, length, None, "record is not a map with a text `id` and bytes `image`")
            else:
                rows.add(member, offset, length, image, check=check_images)
    return rows.frame()


def _next_record(unpacker: msgpack.Unpacker, keep_image: bool) -> tuple[object, bytes | None]:
    """(id, image) of the next record; the image is skipped unread (b"") unless kept.

    Walking the map with read_map_header/skip spares one copy of every image when
    only offsets are wanted; a record that is not a map is skipped whole.
    """
    try:
        entries = unpacker.read_map_header()
    except ValueError:
        unpacker.skip()
        return None, None
    member, image = None, None
    for _ in range(entries):
        key = unpacker.unpack()
        if key == "id":
            member = unpacker.unpack()
        elif key == "image" and keep_image:
            value = unpacker.unpack()
            image = value if isinstance(value, bytes) else None
        elif key == "image":
            unpacker.skip()
            image = b""
        else:
            unpacker.skip()
    return member, image


def read_shard_member(path: Path, offset: int, length: int) -> bytes:
    """The image bytes of the record at `offset` (from the index)."""
    with path.open("rb") as handle:
        handle.seek(offset)
        record = msgpack.unpackb(handle.read(length), raw=False)
    return record["image"]


class _TarInfoOnly(pickle.Unpickler):
    """Admits tarfile.TarInfo and the builtin containers, nothing that can run code."""

    def find_class(self, module: str, name: str) -> type:
        if (module, name) == ("tarfile", "TarInfo"):
            return tarfile.TarInfo
        raise ArchiveError(f"refusing to load {module}.{name} from a tar index pickle (only tarfile.TarInfo is allowed)")


def load_tar_index_pickle(path: Path, container: str) -> pl.DataFrame:
    """A published `tar_index.pkl` (TarInfo objects, in a dict or list) as an index frame.

    Read with a restricted unpickler: any other class in the file is refused, so a
    malicious pickle cannot execute code. The content hash and header check stay null.
    """
    try:
        with path.open("rb") as handle:
            loaded = _TarInfoOnly(handle).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ArchiveError(f"{path}: not a readable tar index: {error}") from error
    members = loaded.values() if isinstance(loaded, dict) else loaded
    if not isinstance(members, (list, tuple, type({}.values()))):
        raise ArchiveError(f"{path}: expected a dict or list of TarInfo, found {type(loaded).__name__}")
    infos = [info for info in members if isinstance(info, tarfile.TarInfo) and info.isfile()]
    return pl.DataFrame(
        {
            "container": [container] * len(infos),
            "member": [info.name for info in infos],
            "offset": [info.offset_data for info in infos],
            "length": [info.size for info in infos],
        },
        schema={name: INDEX_SCHEMA[name] for name in ("container", "member", "offset", "length")},
    ).with_columns(pl.lit(None, dtype=INDEX_SCHEMA[name]).alias(name) for name in ("content_hash", "format", "problem", "detail"))


def index_tar(path: Path, name: str | None = None) -> pl.DataFrame:
    """Index the regular files of an uncompressed tar by scanning it once."""
    rows = _IndexRows.empty(name or path.name)
    try:
        with tarfile.open(path, mode="r:") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                extracted = archive.extractfile(info)
                rows.add(info.name, info.offset_data, info.size, extracted.read() if extracted else b"")
    except tarfile.TarError as error:
        raise ArchiveError(f"{path}: not a readable uncompressed tar: {error}") from error
    return rows.frame()


def read_tar_member(path: Path, offset: int, length: int) -> bytes:
    """The bytes of a tar member at `offset` (from the index)."""
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(length)
    if len(data) != length:
        raise ArchiveError(f"{path}: member at {offset} is cut short ({len(data)} of {length} bytes)")
    return data


class ImageStore:
    """Opens catalog uris below a dataset root: plain paths, or `container#member` via an index."""

    def __init__(self, root: Path, index: pl.DataFrame | None = None) -> None:
        self.root = Path(root)
        self._locations: dict[tuple[str, str], tuple[int, int]] = {}
        if index is not None:
            usable = index.filter(pl.col("problem").is_null())
            self._locations = {
                (container, member): (offset, length)
                for container, member, offset, length in usable.select("container", "member", "offset", "length").iter_rows()
            }

    def read_bytes(self, uri: str) -> bytes:
        container, separator, member = uri.partition(MEMBER_SEPARATOR)
        path = self.root / container
        if not separator:
            return path.read_bytes()
        location = self._locations.get((container, member))
        if location is None:
            raise ArchiveError(f"{uri}: not in the index of {container}")
        if container.endswith(".tar"):
            return read_tar_member(path, *location)
        return read_shard_member(path, *location)

    def open(self, uri: str) -> io.BytesIO:
        """A binary stream for Pillow (`PIL.Image.open(store.open(uri))`)."""
        return io.BytesIO(self.read_bytes(uri))
