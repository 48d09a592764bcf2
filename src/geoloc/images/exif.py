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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

import pillow_heif
from PIL import ExifTags, Image, UnidentifiedImageError

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


def _read_header(image: Image.Image, want_gps: bool) -> ImageHeader:
    if not want_gps:
        return ImageHeader(image.format)
    if image.format == "PNG" and "exif" not in image.info:
        # Pillow would decode the pixels looking for an eXIf chunk after the image data.
        return ImageHeader(image.format, problem="no_exif", detail="no eXIf chunk before the image data")
    try:
        exif = image.getexif()
        if not exif and image.info.get("exif"):
            return ImageHeader(image.format, problem="corrupt_exif", detail="the EXIF block cannot be parsed")
        if not exif:
            return ImageHeader(image.format, problem="no_exif", detail="no EXIF block")
        lat, lon = gps_from_exif(exif)
    except _UnusableGps as unusable:
        return ImageHeader(image.format, problem=unusable.problem, detail=str(unusable))
    except Exception as error:  # noqa: BLE001 - any parser failure means corrupt EXIF, named below
        return ImageHeader(image.format, problem="corrupt_exif", detail=f"{type(error).__name__}: {error}")
    return ImageHeader(image.format, lat, lon)


def read_header(source: bytes | str | Path, want_gps: bool = True) -> ImageHeader:
    """Open lazily (header only, bomb guard on) and read the GPS position if asked.

    A file Pillow cannot identify, or whose header announces a decompression bomb, is
    CORRUPT_IMAGE; a readable image without a usable position has one of GPS_PROBLEMS.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(stream) as image:
                return _read_header(image, want_gps)
    except Image.DecompressionBombError as error:
        return ImageHeader(None, problem=CORRUPT_IMAGE, detail=f"decompression bomb: {error}")
    except UnidentifiedImageError:
        return ImageHeader(None, problem=CORRUPT_IMAGE, detail="not a recognized image format")
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        return ImageHeader(None, problem=CORRUPT_IMAGE, detail=f"{type(error).__name__}: {error}")
