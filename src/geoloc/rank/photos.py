"""Where the ranker gets its photos: any callable from a uri to a PIL image.

`geoloc.images` (folders, tar archives with an offset index, MessagePack shards) plugs in
here as it is; until then the default reads files under one root folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image

OpenImage = Callable[[str], Image.Image]
"""Returns the decoded RGB photo for a uri, or raises OSError / ValueError."""


class FolderImages:
    """Photos stored as files; a uri is a path relative to the root folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def __call__(self, uri: str) -> Image.Image:
        path = (self.root / uri).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"{uri!r} points outside the image folder {self.root}")
        with Image.open(path) as image:
            return image.convert("RGB")
