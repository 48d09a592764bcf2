"""GPS coordinates and a cheap health check from an image's header, without decoding pixels.

Pillow parses the container (JPEG, PNG, TIFF; HEIC through pillow-heif) and its EXIF
block lazily; only the conversion of the GPS tags to signed decimal degrees is ours,
because that is where real files differ (rationals with zero denominators, degrees
only, decimal minutes, missing or odd hemisphere references) and each failure must be
named rather than guessed at.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import pillow_heif
from PIL import ExifTags, Image, UnidentifiedImageError

from geoloc.images.jpeg import APP1, END_OF_IMAGE, START_OF_FRAME, JpegStructureError, frame_pixels, header_segments

pillow_heif.register_heif_opener()

CORRUPT_IMAGE = "corrupt_image"
"""The header cannot be parsed as an image (or announces a decompression bomb)."""

GPS_PROBLEMS = ("no_exif", "no_gps", "zero_denominator", "bad_reference", "corrupt_exif")
"""Why a readable image has no usable GPS position."""

_HEMISPHERES = {
    ExifTags.GPS.GPSLatitudeRef: {"N": 1.0, "S": -1.0},
    ExifTags.GPS.GPSLongitudeRef: {"E": 1.0, "W": -1.0},
}


@dataclass(frozen=True)
class ImageHeader:
    """What the header says: the format, and a GPS position or the reason there is none."""

    format: str | None
    lat: float | None = None
    lon: float | None = None
    problem: str | None = None
    detail: str | None = None


class _UnusableGps(ValueError):
    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(detail)
        self.problem = problem


def _degrees(value: Sequence[Real] | Real, tag: str) -> float:
    """Degrees from (d, m, s), (d, decimal minutes) or (d,) rationals."""
    parts = list(value) if isinstance(value, (tuple, list)) else [value]
    if not 1 <= len(parts) <= 3:
        raise _UnusableGps("corrupt_exif", f"{tag} has {len(parts)} components")
    total = 0.0
    for part, scale in zip(parts, (1.0, 60.0, 3600.0)):
        if getattr(part, "denominator", 1) == 0:
            raise _UnusableGps("zero_denominator", f"{tag} has a zero denominator")
        number = float(part)
        if not math.isfinite(number):
            raise _UnusableGps("corrupt_exif", f"{tag} is not a finite number")
        total += number / scale
    return total


def _sign(reference: object, tag: int) -> float:
    text = reference.decode("ascii", "replace") if isinstance(reference, bytes) else str(reference)
    sign = _HEMISPHERES[tag].get(text.strip("\x00 ").upper()[:1])
    if sign is None:
        raise _UnusableGps("bad_reference", f"{ExifTags.GPSTAGS[tag]} is {text!r}")
    return sign


def gps_from_exif(exif: Image.Exif) -> tuple[float, float]:
    """Signed decimal (lat, lon) from an EXIF block; _UnusableGps says why not."""
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    if not gps and ExifTags.IFD.GPSInfo in exif:
        raise _UnusableGps("corrupt_exif", "the GPS block pointer leads to no readable block")
    if not gps:
        raise _UnusableGps("no_gps", "no GPS block")
    position = []
    for value_tag, reference_tag in (
        (ExifTags.GPS.GPSLatitude, ExifTags.GPS.GPSLatitudeRef),
        (ExifTags.GPS.GPSLongitude, ExifTags.GPS.GPSLongitudeRef),
    ):
        if value_tag not in gps:
            raise _UnusableGps("no_gps", f"no {ExifTags.GPSTAGS[value_tag]}")
        if reference_tag not in gps:
            raise _UnusableGps("bad_reference", f"no {ExifTags.GPSTAGS[reference_tag]}")
        magnitude = _degrees(gps[value_tag], ExifTags.GPSTAGS[value_tag])
        position.append(_sign(gps[reference_tag], reference_tag) * magnitude)
    return position[0], position[1]


def _gps_header(fmt: str, load_exif: Callable[[], Image.Exif], raw_exif: bytes | None) -> ImageHeader:
    try:
        exif = load_exif()
        if not exif and raw_exif:
            return ImageHeader(fmt, problem="corrupt_exif", detail="the EXIF block cannot be parsed")
        if not exif:
            return ImageHeader(fmt, problem="no_exif", detail="no EXIF block")
        lat, lon = gps_from_exif(exif)
    except _UnusableGps as unusable:
        return ImageHeader(fmt, problem=unusable.problem, detail=str(unusable))
    except Exception as error:  # noqa: BLE001 - any parser failure means corrupt EXIF, named below
        return ImageHeader(fmt, problem="corrupt_exif", detail=f"{type(error).__name__}: {error}")
    return ImageHeader(fmt, lat, lon)


def _read_header(image: Image.Image, want_gps: bool) -> ImageHeader:
    if not want_gps:
        return ImageHeader(image.format)
    if image.format == "PNG" and "exif" not in image.info:
        # Pillow would decode the pixels looking for an eXIf chunk after the image data.
        return ImageHeader(image.format, problem="no_exif", detail="no eXIf chunk before the image data")
    return _gps_header(image.format, image.getexif, image.info.get("exif"))


def _jpeg_segments(data: bytes) -> tuple[bytes | None, int] | None:
    """(EXIF payload or None, pixel count) from a JPEG's marker segments up to the scan.

    Pillow's JPEG open also parses quantization and Huffman tables, which a GPS scan
    over millions of files does not need; walking the segment lengths is a third of
    the work. None when the markers are not well formed: Pillow then says why.
    """
    exif, pixels = None, None
    try:
        for marker, start, end in header_segments(data):
            if marker == APP1 and exif is None and data.startswith(b"Exif\x00\x00", start + 4, end):
                exif = data[start + 10:end]
            elif marker in START_OF_FRAME and end - start >= 9:
                pixels = frame_pixels(data, start)
            elif marker == END_OF_IMAGE:
                return None
    except JpegStructureError:
        return None
    return (exif, pixels) if pixels is not None else None


def _load_exif(payload: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.load(payload)
    return exif


def _fast_jpeg_header(data: bytes, want_gps: bool) -> ImageHeader | None:
    segments = _jpeg_segments(data)
    if segments is None:
        return None
    exif, pixels = segments
    if Image.MAX_IMAGE_PIXELS and pixels > 2 * Image.MAX_IMAGE_PIXELS:
        return None
    if not want_gps:
        return ImageHeader("JPEG")
    return _gps_header("JPEG", lambda: _load_exif(exif or b""), exif)


def read_header(source: bytes | str | Path, want_gps: bool = True) -> ImageHeader:
    """Open lazily (header only, bomb guard on) and read the GPS position if asked.

    A file Pillow cannot identify, or whose header announces a decompression bomb, is
    CORRUPT_IMAGE; a readable image without a usable position has one of GPS_PROBLEMS.
    JPEG bytes take a shorter road to the same answer (`_jpeg_segments`).
    """
    if isinstance(source, bytes):
        fast = _fast_jpeg_header(source, want_gps)
        if fast is not None:
            return fast
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(stream) as image:
            return _read_header(image, want_gps)
    except Image.DecompressionBombError as error:
        return ImageHeader(None, problem=CORRUPT_IMAGE, detail=f"decompression bomb: {error}")
    except UnidentifiedImageError:
        return ImageHeader(None, problem=CORRUPT_IMAGE, detail="not a recognized image format")
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return ImageHeader(None, problem=CORRUPT_IMAGE, detail=f"{type(error).__name__}: {error}")
