"""Decoding photo bytes to pixels, and the one set of errors that means "this photo is unreadable".

Every stage that decodes photos (embedding, prediction, the web app, the rankers, the
zero-shot client) catches UNREADABLE around `open_photo` and reports `unreadable_reason`:
a bad file is counted and named, never a crash of the batch. Pillow's decompression-bomb
guard stays on; `max_pixels` refuses a photo from its header, before any pixel is decoded.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
"""What Pillow raises for bytes that are not a decodable photo (UnidentifiedImageError is an OSError)."""


def open_photo(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """The decoded photo in its own mode; raises one of UNREADABLE (a bomb too) with the reason."""
    image = Image.open(io.BytesIO(data))
    if max_pixels is not None and image.width * image.height > max_pixels:
        image.close()
        raise Image.DecompressionBombError(
            f"{image.width}x{image.height} = {image.width * image.height:,} pixels; the limit is {max_pixels:,}")
    image.load()
    return image


def decode_photo(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """RGB pixels of an encoded photo (see open_photo)."""
    with open_photo(data, max_pixels) as image:
        return image.convert("RGB")


def unreadable_reason(error: BaseException) -> str:
    """`Class: message`, the same for the same bytes on every run (Pillow's own message for unknown
    formats names the in-memory buffer's address)."""
    if isinstance(error, UnidentifiedImageError):
        return "UnidentifiedImageError: cannot identify image file"
    return f"{error.__class__.__name__}: {error}"
