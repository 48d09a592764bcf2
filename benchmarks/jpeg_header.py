"""Reading JPEG headers: the segment walk alone, `read_header` (GPS from EXIF) and `strip_metadata`.

Camera-like JPEGs (640x480, EXIF with GPS, an ICC profile in APP2, an XMP packet, a
comment; one baseline, one progressive, one with only the JFIF header), each call
repeated and the best of `--repeats` rounds kept, in CPU time (one thread: other work on a
shared machine barely moves it). Prints one JSON line of microseconds per file:
{"walk_us": {...}, "read_header_us": {...}, "strip_metadata_us": {...}}.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable

from PIL import ExifTags, Image, ImageCms

from geoloc.images.exif import read_header
from geoloc.images.jpeg import header_segments
from geoloc.images.metadata import strip_metadata


def camera_jpeg(progressive: bool = False, metadata: bool = True) -> bytes:
    image = Image.effect_noise((640, 480), 40).convert("RGB")
    buffer = io.BytesIO()
    if not metadata:
        image.save(buffer, "JPEG", quality=90, progressive=progressive)
        return buffer.getvalue()
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "geoloc-bench"
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (48.0, 51.0, 29.0),
                                  ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (2.0, 17.0, 40.0)}
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b" " * 2000 + b"</x:xmpmeta>"
    image.save(buffer, "JPEG", quality=90, progressive=progressive, exif=exif.tobytes(), icc_profile=profile,
               comment=b"bench", xmp=xmp)
    return buffer.getvalue()


def microseconds(function: Callable[[bytes], object], data: bytes, calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            function(data)
        best = min(best, time.process_time() - start)
    return round(best / calls * 1e6, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    files = {"camera": camera_jpeg(), "progressive": camera_jpeg(progressive=True),
             "plain": camera_jpeg(metadata=False)}
    figures: dict[str, dict[str, float]] = {"walk_us": {}, "read_header_us": {}, "strip_metadata_us": {}}
    for name, data in files.items():
        figures["walk_us"][name] = microseconds(lambda d: list(header_segments(d)), data, args.calls, args.repeats)
        figures["read_header_us"][name] = microseconds(read_header, data, args.calls, args.repeats)
        figures["strip_metadata_us"][name] = microseconds(strip_metadata, data, args.calls, args.repeats)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
