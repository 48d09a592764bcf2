"""Photo bytes with their metadata removed, so nothing but pixels leaves the machine.

EXIF and XMP carry GPS; IPTC, comments and text chunks carry names and places. Where the
container lets us drop them without decoding (JPEG segments, PNG chunks, WebP RIFF chunks),
the pixels stay bit-identical and the colour profile is kept; GIF is re-encoded without
its comment and application extensions.
"""

from __future__ import annotations

import io
import struct

from PIL import Image

from geoloc.images.jpeg import JpegStructureError, header_segments

JPEG_DROPPED = {0xE1, 0xED, 0xFE}
"""APP1 (EXIF, XMP), APP13 (IPTC) and COM. APP2 (ICC profile) stays."""
PNG_DROPPED = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}
WEBP_DROPPED = {b"EXIF", b"XMP "}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class MetadataError(ValueError):
    """The bytes do not follow their container's structure, so metadata cannot be removed safely."""


def strip_metadata(data: bytes) -> bytes:
    """The same photo without EXIF, XMP, IPTC, comments or text chunks (JPEG, PNG, WebP, GIF)."""
    if data.startswith(b"\xff\xd8"):
        return _strip_jpeg(data)
    if data.startswith(PNG_SIGNATURE):
        return _strip_png(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _strip_webp(data)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _reencode_gif(data)
    raise MetadataError("not a JPEG, PNG, WebP or GIF: cannot remove its metadata")


def _strip_jpeg(data: bytes) -> bytes:
    try:
        kept = [data[start:end] for marker, start, end in header_segments(data) if marker not in JPEG_DROPPED]
    except JpegStructureError as error:
        raise MetadataError(f"JPEG: {error}") from error
    return data[:2] + b"".join(kept)


def _strip_png(data: bytes) -> bytes:
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
        if kind not in PNG_DROPPED:
            kept.append(data[position:end])
        position = end
        if kind == b"IEND":
            break
    return b"".join(kept)


def _strip_webp(data: bytes) -> bytes:
    chunks: list[bytes] = []
    position = 12
    end_of_riff = min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
    while position + 8 <= end_of_riff:
        kind = data[position:position + 4]
        (length,) = struct.unpack("<I", data[position + 4:position + 8])
        end = position + 8 + length + (length & 1)
        if position + 8 + length > end_of_riff:
            raise MetadataError(f"WebP: chunk {kind!r} runs past the end")
        chunk = data[position:min(end, end_of_riff)]
        if kind == b"VP8X":
            flags = chunk[8] & ~0x0C  # clear the EXIF (0x08) and XMP (0x04) flags
            chunk = chunk[:8] + bytes([flags]) + chunk[9:]
        if kind not in WEBP_DROPPED:
            chunks.append(chunk)
        position = end
    body = b"WEBP" + b"".join(chunks)
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
