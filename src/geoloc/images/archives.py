"""Images inside MessagePack shards, tar and zip archives, read in place through an offset index.

One streaming pass over a container yields an index row per member (name, byte offset,
length, content hash, header check); the index is kept in Parquet, after which any
member is one seek and one read away, with nothing unpacked to disk.
"""

from __future__ import annotations

import io
import mmap
import pickle
import tarfile
from pathlib import Path
from typing import BinaryIO

import msgpack
import polars as pl

from geoloc.images.containment import RootFolder
from geoloc.images.index_rows import INDEX_SCHEMA, ArchiveError, IndexRows, read_span
from geoloc.images.members import MemberLookup
from geoloc.images.msgpack_spans import Truncated, map_entries, value_end
from geoloc.images.zips import read_zip_member

MEMBER_SEPARATOR = "#"
"""A catalog uri `container#member` names a member of a shard, tar or zip, relative to the dataset root.

Only where `container` is an archive the store has an index for: elsewhere `#` is an
ordinary character of a file name (`a#1.jpg`)."""

_MAX_KEY_BYTES = 64
_BIN_HEADS = frozenset({0xC4, 0xC5, 0xC6})


def index_shard(path: Path | str, name: str | None = None, check_images: bool = True) -> pl.DataFrame:
    """Index a shard of MessagePack maps with `id` and `image` (bytes) in one streaming pass.

    With `check_images` each image is also hashed and its header sniffed (what the
    catalog needs); without, the pass only records where each record lies.
    A truncated last record, or bytes that stop being MessagePack, lose what they cover
    only: they appear as one CORRUPT_IMAGE row named `@<offset>`, the records before stay.
    """
    path = Path(path)
    rows = IndexRows.empty(name or path.name)
    with path.open("rb") as handle:
        if path.stat().st_size == 0:
            return rows.frame()
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            buffer = memoryview(mapped)
            try:
                _index_records(buffer, rows, check_images)
            finally:
                buffer.release()
    return rows.frame()


def _index_records(buffer: memoryview, rows: IndexRows, check_images: bool) -> None:
    offset, size = 0, len(buffer)
    while offset < size:
        try:
            end = value_end(buffer, offset)
        except Truncated:
            rows.add(f"@{offset}", offset, size - offset, None, "truncated record at the end of the shard")
            return
        except ValueError as error:
            rows.add(f"@{offset}", offset, size - offset, None, f"unreadable from here on: {error}")
            return
        member, image = _record_fields(buffer, offset, check_images)
        if not isinstance(member, str) or image is None:
            rows.add(f"@{offset}", offset, end - offset, None, "record is not a map with a text `id` and bytes `image`")
        else:
            rows.add(member, offset, end - offset, image, check=check_images)
        offset = end


def _record_fields(buffer: memoryview, offset: int, keep_image: bool) -> tuple[object, bytes | None]:
    """(id, image) of the well-formed record at `offset`; the image is left unread (b"") unless kept."""
    entries = map_entries(buffer, offset)
    if entries is None:
        return None, None
    count, position = entries
    member, image = None, None
    for _ in range(count):
        key_end = value_end(buffer, position)
        end = value_end(buffer, key_end)
        key = msgpack.unpackb(buffer[position:key_end], raw=False) if key_end - position <= _MAX_KEY_BYTES else None
        if key == "id":
            member = msgpack.unpackb(buffer[key_end:end], raw=False)
        elif key == "image" and buffer[key_end] in _BIN_HEADS:
            image = msgpack.unpackb(buffer[key_end:end]) if keep_image else b""
        position = end
    return member, image


def read_shard_member(handle: BinaryIO, offset: int, length: int) -> bytes:
    """The image bytes of the record at `offset` (from the index) of an open shard."""
    return msgpack.unpackb(read_span(handle, offset, length), raw=False)["image"]


class _TarInfoOnly(pickle.Unpickler):
    """Admits tarfile.TarInfo and the builtin containers, nothing that can run code."""

    def find_class(self, module: str, name: str) -> type:
        if (module, name) == ("tarfile", "TarInfo"):
            return tarfile.TarInfo
        raise ArchiveError(
            f"refusing to load {module}.{name} from a tar index pickle (only tarfile.TarInfo is allowed)"
        )


def load_tar_index_pickle(path: Path, container: str) -> pl.DataFrame:
    """A published `tar_index.pkl` (TarInfo objects, in a dict or list) as an index frame.

    A dict's keys are the names photos are asked for by (MP16-Pro's IMG_ID in GeoRanker's
    files), whatever the member is called inside the tar; a list's members keep their names.

    Read with a restricted unpickler: any other class in the file is refused, so a
    malicious pickle cannot execute code. The content hash and header check stay null.
    """
    try:
        with path.open("rb") as handle:
            loaded = _TarInfoOnly(handle).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ArchiveError(f"{path}: not a readable tar index: {error}") from error
    if isinstance(loaded, dict):  # GeoRanker looks a photo up by its key (the MP16-Pro IMG_ID): so do we
        named = [(str(key), info) for key, info in loaded.items()]
    elif isinstance(loaded, (list, tuple)):
        named = [(getattr(info, "name", None), info) for info in loaded]
    else:
        raise ArchiveError(f"{path}: expected a dict or list of TarInfo, found {type(loaded).__name__}")
    named = [(name, info) for name, info in named if isinstance(info, tarfile.TarInfo) and info.isfile()]
    infos = [info for _, info in named]
    located = pl.DataFrame(
        {
            "container": [container] * len(infos),
            "member": [name for name, _ in named],
            "offset": [info.offset_data for info in infos],
            "length": [info.size for info in infos],
        },
        schema={name: INDEX_SCHEMA[name] for name in ("container", "member", "offset", "length")},
    )
    unknown = ("content_hash", "format", "problem", "detail")
    return located.with_columns(pl.lit(None, dtype=INDEX_SCHEMA[name]).alias(name) for name in unknown)


def index_tar(path: Path, name: str | None = None) -> pl.DataFrame:
    """Index the regular files of an uncompressed tar by scanning it once."""
    rows = IndexRows.empty(name or path.name)
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


def read_tar_member(handle: BinaryIO, offset: int, length: int) -> bytes:
    """The bytes of a tar member at `offset` (from the index) of an open tar."""
    return read_span(handle, offset, length)


class ImageStore:
    """Opens catalog uris below a dataset root: plain paths, or `container#member` via an index.

    Every uri is opened through a `RootFolder`: one that leaves the root is refused. The index
    is an index frame, or a `MemberLookup` (what `open_index` maps from an index file's
    cache, shared by every worker that opens it).
    """

    def __init__(self, root: Path, index: pl.DataFrame | MemberLookup | None = None) -> None:
        self.root = RootFolder(root)
        if isinstance(index, pl.DataFrame):
            index = MemberLookup.build(index, MEMBER_SEPARATOR)
        self.members = index
        self._containers = index.containers if index is not None else frozenset()

    @classmethod
    def open_index(cls, root: Path, index_path: Path) -> ImageStore:
        """A store whose member index is an index file, looked up through its memory-mapped cache."""
        return cls(root, MemberLookup.cached(index_path, MEMBER_SEPARATOR))

    def read_bytes(self, uri: str) -> bytes:
        container, separator, member = uri.partition(MEMBER_SEPARATOR)
        if not separator or container not in self._containers:
            return self.root.read_bytes(uri)
        location = self.members.locate(uri)
        if location is None:
            raise ArchiveError(f"{uri}: not in the index of {container}")
        with self.root.open(container, uri) as handle:
            if container.endswith(".tar"):
                return read_tar_member(handle, *location)
            if container.endswith(".zip"):
                return read_zip_member(handle, *location)
            return read_shard_member(handle, *location)

    def open(self, uri: str) -> io.BytesIO:
        """A binary stream for Pillow (`PIL.Image.open(store.open(uri))`)."""
        return io.BytesIO(self.read_bytes(uri))
