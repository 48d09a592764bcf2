"""Where the ranker gets its photos: files under a folder or members of an uncompressed tar.

Both go through `geoloc.images` (an offset index for the tar, so a 4.7 M-photo archive is
never unpacked) and decode under the same pixel limit as `geoloc predict`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import polars as pl
from PIL import Image

from geoloc.images import ImageStore, index_tar, load_tar_index_pickle
from geoloc.images.archives import MEMBER_SEPARATOR
from geoloc.predict import UNREADABLE, decode_photo
from geoloc.tables import read_table, write_table

OpenImage = Callable[[str], Image.Image]
"""Returns the decoded RGB photo for a uri, or raises OSError / ValueError."""

MAX_PIXELS = 50_000_000
"""Larger photos are refused from their header (decompression bombs); the models see 224-448 px anyway."""

log = logging.getLogger(__name__)


def tar_index(tar: Path, index_path: Path | None = None) -> pl.DataFrame:
    """The offset index of `tar`: a published `.pkl` (restricted unpickler), a saved Parquet, or a fresh scan.

    A scan is written to `index_path` (when given and a `.parquet`) so the next run skips it.
    """
    if index_path is not None and index_path.suffix == ".pkl":
        return load_tar_index_pickle(index_path, tar.name)
    if index_path is not None and index_path.exists():
        return read_table(index_path)
    log.info("indexing %s once (pass an index file to keep the result)", tar)
    index = index_tar(tar)
    if index_path is not None:
        write_table(index, index_path)
    return index


class StorePhotos:
    """Photos by uri: a path relative to a folder, or a member name of one tar.

    A tar whose members all sit under one top folder (`mp16/ba/08/…jpg`) also answers to
    the names without it (`ba/08/…jpg`), as the GeoRanking table writes them.
    """

    def __init__(self, location: str | Path, index_path: Path | None = None, max_pixels: int = MAX_PIXELS):
        location = Path(location).resolve()
        self.max_pixels = max_pixels
        self.container: str | None = None
        self.prefix = ""
        if location.is_dir():
            self.store = ImageStore(location)
        elif location.is_file() and location.suffix == ".tar":
            index = tar_index(location, index_path)
            self.store = ImageStore(location.parent, index)
            self.container = location.name
            self.prefix = _shared_top_folder(index["member"])
        else:
            raise FileNotFoundError(f"{location}: no such folder or uncompressed .tar of photos")
        self.root = location

    def __call__(self, uri: str) -> Image.Image:
        try:
            return decode_photo(self.store.read_bytes(self._store_uri(uri)), self.max_pixels)
        except UNREADABLE as error:
            raise ValueError(f"{uri}: {error.__class__.__name__}: {error}") from error

    def _store_uri(self, uri: str) -> str:
        if self.container is None:
            return uri
        member = uri if not self.prefix or uri.startswith(self.prefix) else self.prefix + uri
        return f"{self.container}{MEMBER_SEPARATOR}{member}"


def _shared_top_folder(members: pl.Series) -> str:
    """`top/` when every member lies under the same top folder, else ''."""
    tops = members.str.split("/").list.first().unique()
    if len(tops) == 1 and members.str.contains("/").all():
        return f"{tops[0]}/"
    return ""

