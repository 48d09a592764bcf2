"""Walking a JPEG's marker segments up to its compressed data, without decoding anything.

The one walker behind the fast EXIF/GPS read (`geoloc.images.exif`) and metadata
removal (`geoloc.images.metadata`): segment boundaries come from the two length bytes
after each marker, so a header is walked in microseconds; anything that breaks the
structure is a JpegStructureError naming where.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from geoloc.errors import InputError

START_OF_IMAGE = b"\xff\xd8"
START_OF_SCAN = 0xDA
END_OF_IMAGE = 0xD9
APP1 = 0xE1
"""EXIF (after an `Exif\\0\\0` tag) and XMP."""
START_OF_FRAME = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
"""Markers whose payload gives the frame size (precision, height, width, ...), for every coding process."""
STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
"""TEM and the restart markers: two bytes, no length."""
AFTER_COMPRESSED_DATA = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""In compressed data 0xFF is followed by a stuffed 0x00, a restart marker or more 0xFF (fill):
anything else is the next segment's marker."""


class JpegStructureError(InputError):
    """The bytes break the JPEG marker structure before the compressed data."""


def header_segments(data: bytes, start: int = 2) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each segment before the compressed data, in file order.

    `data[start:end]` is the whole segment, its marker bytes included (the payload is
    `data[start + 4:end]`); fill bytes between segments are skipped. The last segment is the
    start of scan or the end of image, and reaches to the end of `data`. The walk begins
    after the start of image, or at `start` (a marker between two scans).
    """
    if not data.startswith(START_OF_IMAGE):
        raise JpegStructureError("not a JPEG: no start-of-image marker")
    size, position = len(data), start
    while position + 1 < size:
        if data[position] != 0xFF:
            raise JpegStructureError(f"no segment marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1
        elif marker == START_OF_SCAN or marker == END_OF_IMAGE:
            yield marker, position, size
            return
        elif marker in STANDALONE:
            yield marker, position, position + 2
            position += 2
        else:
            if position + 4 > size:
                raise JpegStructureError("truncated segment header")
            end = position + 2 + (data[position + 2] << 8 | data[position + 3])
            if end < position + 4 or end > size:
                raise JpegStructureError(f"segment at byte {position} runs past the end")
            yield marker, position, end
            position = end
    raise JpegStructureError("no image data (start of scan) found")


def frame_pixels(data: bytes, start: int) -> int:
    """Width x height from a start-of-frame segment at `start` (see header_segments)."""
    return (data[start + 5] << 8 | data[start + 6]) * (data[start + 7] << 8 | data[start + 8])


def image_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of every segment of the image, in file order, the end of image last.

    As header_segments, but a start of scan's segment holds its header and its compressed data
    (up to the next marker), and the walk goes on through every scan of a progressive file.
    Whatever follows the end of image (a motion photo's video, a second JPEG) is no part of it.
    """
    size, position = len(data), 2
    while True:
        for marker, start, end in header_segments(data, position):
            if marker == END_OF_IMAGE:
                yield marker, start, start + 2
                return
            if marker != START_OF_SCAN:
                yield marker, start, end
                continue
            if start + 4 > size:
                raise JpegStructureError("truncated scan header")
            following = AFTER_COMPRESSED_DATA.search(data, start + 2 + (data[start + 2] << 8 | data[start + 3]))
            if following is None:
                raise JpegStructureError("no end-of-image marker (truncated file)")
            yield marker, start, following.start()
            position = following.start()
