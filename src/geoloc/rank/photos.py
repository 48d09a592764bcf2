"""Where the ranker gets its photos, and how it makes them ready for the processor.

Photos are files under a folder or members of an uncompressed tar, both through
`geoloc.images` (an offset index for the tar, so a 4.7 M-photo archive is never
unpacked), decoded under the same pixel limit as `geoloc predict`.

GeoRanker's checkpoint was trained, and its paper's numbers scored, on photos prepared
one way, so that is the default here: a gallery photo (in training, the query photo too)
is re-encoded as JPEG at Pillow's default quality (75) from the decoded file, then every
photo is converted to RGB and resized by `qwen-vl-utils` (each side a multiple of 28
within its pixel bounds) before the processor sees it. `RAW` hands the decoded RGB file
over as it is.
"""

from __future__ import annotations

import copy
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from PIL import Image

from geoloc.images import ImageStore, index_tar, load_tar_index_pickle
from geoloc.images.archives import MEMBER_SEPARATOR
from geoloc.images.decoding import UNREADABLE, open_photo
from geoloc.tables import read_table, write_table

OpenImage = Callable[[str], Image.Image]
"""Returns the decoded RGB photo for a uri, or raises OSError / ValueError."""

MAX_PIXELS = 50_000_000
"""Larger photos are refused from their header (decompression bombs); the models see 224-448 px anyway."""

log = logging.getLogger(__name__)

JPEG_MODES = frozenset({"1", "L", "RGB", "CMYK"})
"""Modes Pillow writes as JPEG; others (RGBA, P ...) are made RGB first, where GeoRanker's scripts would fail."""


@dataclass(frozen=True)
class Preparation:
    """What is done to a decoded photo before the processor."""

    reencode_jpeg: bool = False
    """Save as JPEG with Pillow's defaults and decode again, as GeoRanker does to gallery photos."""
    qwen_sizing: bool = False
    """Resize with qwen-vl-utils (`fetch_image`), as GeoRanker's `process_vision_info` call does."""


RAW = Preparation()
GEORANKER_QUERY = Preparation(qwen_sizing=True)
"""evaluate.py: the query photo read from its file."""
GEORANKER_GALLERY = Preparation(reencode_jpeg=True, qwen_sizing=True)
"""evaluate.py: a gallery photo; finetune_geo_ranker.py: query and gallery photos alike."""


def prepare_photo(data: bytes, preparation: Preparation, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """The RGB photo the processor is given, from the file's bytes."""
    with open_photo(data, max_pixels) as image:
        if preparation.reencode_jpeg:
            encoded = io.BytesIO()
            (image if image.mode in JPEG_MODES else image.convert("RGB")).save(encoded, format="JPEG")
            with open_photo(encoded.getvalue()) as reencoded:
                rgb = reencoded.convert("RGB")
        else:
            rgb = image.convert("RGB")
    if not preparation.qwen_sizing:
        return rgb
    from qwen_vl_utils import fetch_image

    return fetch_image({"image": rgb})


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

    def __init__(self, location: str | Path, index_path: Path | None = None, max_pixels: int = MAX_PIXELS,
                 preparation: Preparation = RAW):
        location = Path(location).resolve()
        self.max_pixels = max_pixels
        self.preparation = preparation
        self.container: str | None = None
        self.prefix = ""
        if location.is_dir():
            self.store = ImageStore(location)
        elif location.is_file() and location.suffix == ".tar":
            index = tar_index(location, index_path)
            if index_path is not None and index_path.suffix == ".parquet":  # a file: workers share its mapped cache
                self.store = ImageStore.open_index(location.parent, index_path)
            else:
                self.store = ImageStore(location.parent, index)
            self.container = location.name
            self.prefix = _shared_top_folder(index["member"])
        else:
            raise FileNotFoundError(f"{location}: no such folder or uncompressed .tar of photos")
        self.root = location

    def prepared(self, preparation: Preparation) -> StorePhotos:
        """The same photos (sharing the opened store) prepared another way."""
        other = copy.copy(self)
        other.preparation = preparation
        return other

    def __call__(self, uri: str) -> Image.Image:
        try:
            return prepare_photo(self.store.read_bytes(self._store_uri(uri)), self.preparation, self.max_pixels)
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

