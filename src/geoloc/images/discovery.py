"""Finding photos on disk: one suffix set for every stage (catalog scans, zero-shot, predict, retrieve)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from geoloc.errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp", ".heic", ".heif"})
"""File suffixes taken as photos (compared lower-cased): what Pillow, with pillow-heif, decodes."""


@dataclass(frozen=True)
class Photo:
    """A photo named on the command line: its id (file name, or path relative to the folder given) and path.

    An upload to the web app is held in memory (`data`) and never written to `path`, which only names it.
    """

    query_id: str
    path: Path
    data: bytes | None = field(default=None, repr=False, compare=False)

    def read_bytes(self) -> bytes:
        return self.path.read_bytes() if self.data is None else self.data


def photos_reader(photos: list[Photo]) -> tuple[list[tuple[str, str]], Callable[[str, str], bytes]]:
    """Locations and a reader for `geoloc.encode.embed_batches` over these photos, in memory or on disk."""
    return [("", str(number)) for number in range(len(photos))], lambda source, uri: photos[int(uri)].read_bytes()


def list_files(root: Path, suffixes: frozenset[str] | None = IMAGE_SUFFIXES) -> list[str]:
    """Paths below `root` relative to it, sorted; only those with an image suffix unless `suffixes` is None."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        relative = Path(folder).relative_to(root)
        found.extend(
            (relative / name).as_posix() for name in names
            if suffixes is None or Path(name).suffix.lower() in suffixes
        )
    return sorted(found)


class PhotoIdClash(InputError):
    """Two different files would answer to one id: their answers could not be told apart."""


def find_photos(paths: Iterable[Path]) -> list[Photo]:
    """Photos named directly, and those under folders (id = path relative to the folder); ids unique.

    A file named twice is kept once; two files with one id (`a/x.jpg` and `b/x.jpg` given as
    folders `a` and `b`) are refused with both paths named.
    """
    by_id: dict[str, Photo] = {}
    for path in paths:
        if path.is_dir():
            found = [Photo(relative, path / relative) for relative in list_files(path)]
        elif path.is_file():
            found = [Photo(path.name, path)]
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
        for photo in found:
            first = by_id.setdefault(photo.query_id, photo)
            if first.path != photo.path:
                raise PhotoIdClash(
                    f"{first.path} and {photo.path} would both have the id {photo.query_id!r} (ids are paths "
                    "below the folder given, or file names): give their common parent folder instead, or "
                    "rename one")
    return list(by_id.values())
