"""Photo bytes with their metadata removed, so nothing but pixels leaves the machine.

EXIF and XMP carry GPS; IPTC, comments, text chunks and content credentials (C2PA / JUMBF)
can carry names and places, and a file can hide more after its end (a motion photo's video,
a second JPEG with its own EXIF). Each container is therefore rebuilt from an allow list:
only what a decoder needs for the pixels, plus the colour profile, up to the image's end.
A new kind of metadata is dropped without anyone naming it. Where the container lets us do
that without decoding (JPEG segments, PNG chunks, WebP RIFF chunks), the pixels stay
bit-identical; GIF is re-encoded without its comment and application extensions.
"""

from __future__ import annotations

import io
import struct

from PIL import Image

from geoloc.errors import InputError
from geoloc.images.jpeg import JpegStructureError, image_segments

JPEG_KEPT = {*range(0xC0, 0xD0), 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF}
"""Start of frame (every coding process), Huffman and arithmetic tables, quantization tables,
restart interval, scan, number of lines, hierarchical progression, expansion, end of image."""
JPEG_KEPT_APP = {0xE0: b"JFIF\x00", 0xE2: b"ICC_PROFILE\x00", 0xEE: b"Adobe"}
"""Application segments kept, by their signature: JFIF (colour space and density; its thumbnail
is dropped), the ICC colour profile, Adobe's colour transform (needed to decode CMYK)."""
PNG_KEPT = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"cICP",
            b"mDCV", b"cLLI", b"acTL", b"fcTL", b"fdAT"}
"""Pixels, palette, transparency, colour (profile and HDR description), animation frames."""
WEBP_KEPT = {b"VP8X", b"VP8 ", b"VP8L", b"ALPH", b"ICCP", b"ANIM", b"ANMF"}
WEBP_FRAME_KEPT = {b"VP8 ", b"VP8L", b"ALPH"}
"""Inside an animation frame (ANMF): its bitstream and alpha, nothing else."""
WEBP_METADATA_FLAGS = 0x08 | 0x04
"""VP8X flags announcing EXIF and XMP chunks, cleared with them."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class MetadataError(InputError):
    """The bytes do not follow their container's structure, so metadata cannot be removed safely."""


def strip_metadata(data: bytes) -> bytes:
    """The same photo with nothing but what decodes its pixels and its colour profile (JPEG, PNG, WebP, GIF)."""
    if data.startswith(b"\xff\xd8"):
        return _strip_jpeg(data)
    if data.startswith(PNG_SIGNATURE):
        return _strip_png(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _strip_webp(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _reencode_gif(data)
    raise MetadataError("not a JPEG, PNG, WebP or GIF: cannot remove its metadata")


def _kept_jpeg_segment(marker: int, segment: bytes) -> bytes | None:
    """The segment as it leaves (JFIF without its thumbnail), or None when it is not on the allow list."""
    if marker in JPEG_KEPT:
        return segment
    signature = JPEG_KEPT_APP.get(marker)
    if signature is None or not segment[4:].startswith(signature):
        return None
    if marker == 0xE0 and len(segment) >= 18:  # JFIF: header to the densities, thumbnail size 0 x 0
        return b"\xff\xe0\x00\x10" + segment[4:16] + b"\x00\x00"
    return segment


def _strip_jpeg(data: bytes) -> bytes:
    """Segments on the allow list and every scan's compressed data, cut at the end of image."""
    try:
        segments = [_kept_jpeg_segment(marker, data[start:end]) for marker, start, end in image_segments(data)]
    except JpegStructureError as error:
        raise MetadataError(f"JPEG: {error}") from error
    return b"".join([data[:2], *(segment for segment in segments if segment is not None)])


def _strip_png(data: bytes) -> bytes:
    """Chunks on the allow list, up to IEND; whatever follows IEND is not part of the image."""
    kept = [PNG_SIGNATURE]
    position = len(PNG_SIGNATURE)
    while position < len(data):
        if position + 8 > len(data):
            raise MetadataError("PNG: truncated chunk header")
        (length,) = struct.unpack(">I", data[position:position + 4])
        kind = data[position + 4:position + 8]
        end = position + 12 + length
        if end > len(data):
            raise MetadataError(f"PNG: chunk {kind!r} runs past the end")
        if kind in PNG_KEPT:
            kept.append(data[position:end])
        if kind == b"IEND":
            return b"".join(kept)
        position = end
    raise MetadataError("PNG: no IEND chunk (truncated file)")


def _riff_chunks(data: bytes, start: int, end: int, allowed: set[bytes]) -> list[bytes]:
    """The chunks between `start` and `end` whose kind is allowed, with their padding byte."""
    chunks = []
    position = start
    while position + 8 <= end:
        kind = data[position:position + 4]
        (length,) = struct.unpack("<I", data[position + 4:position + 8])
        if position + 8 + length > end:
            raise MetadataError(f"WebP: chunk {kind!r} runs past the end")
        chunk = data[position:position + 8 + length] + (b"\x00" if length & 1 else b"")
        if kind == b"VP8X":
            chunk = chunk[:8] + bytes([chunk[8] & ~WEBP_METADATA_FLAGS]) + chunk[9:]
        elif kind == b"ANMF":  # frame header (16 bytes), then the frame's own chunks
            frame = _riff_chunks(data, position + 24, position + 8 + length, WEBP_FRAME_KEPT)
            body = data[position + 8:position + 24] + b"".join(frame)
            chunk = b"ANMF" + struct.pack("<I", len(body)) + body
        if kind in allowed:
            chunks.append(chunk)
        position += 8 + length + (length & 1)
    return chunks


def _strip_webp(data: bytes) -> bytes:
    """RIFF chunks on the allow list (inside animation frames too); bytes past the RIFF size dropped."""
    end_of_riff = min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
    body = b"WEBP" + b"".join(_riff_chunks(data, 12, end_of_riff, WEBP_KEPT))
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _reencode_gif(data: bytes) -> bytes:
    """GIF extensions interleave with frames; a re-encode of every frame keeps pixels and timing."""
    with Image.open(io.BytesIO(data)) as image:
        image.info.pop("comment", None)
        image.info.pop("extension", None)
        buffer = io.BytesIO()
        frames = getattr(image, "n_frames", 1)
        image.save(buffer, format="GIF", save_all=frames > 1, comment=b"")
    return buffer.getvalue()
