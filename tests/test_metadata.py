"""Metadata removal on real photo bytes: an allow list per container, pixels bit-identical.

Every photo here carries location where real files do (EXIF GPS, XMP, C2PA / JUMBF content
credentials, a second JPEG or a motion photo's video after the end of the image) and
the stripped bytes must hold none of it while decoding to exactly the same pixels.
"""

import io
import struct
import zlib

import numpy as np
import pytest
from datawriters import gps_block, image_bytes
from PIL import Image, ImageSequence, PngImagePlugin

from geoloc.images import MetadataError, strip_metadata

pytestmark = pytest.mark.filterwarnings("ignore:(Corrupt EXIF|Image appears to be a malformed MPO)")

ICC = b"stand-in ICC profile bytes"
PLANTED = (b"GPS", b"c2pa", b"jumb", b"48.8584", b"ftyp", b"xmpmeta", b"Exif", b"secret", b"second photo")
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description exif:GPSLatitude="48.8584N"/></rdf:RDF></x:xmpmeta>')
DECODING_PNG_CHUNKS = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT",
                       b"acTL", b"fcTL", b"fdAT"}
SECOND_JPEG = image_bytes(gps_block(48.8584, 2.2945), label="secret second photo")
MOTION_VIDEO = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + b"GPS 48.8584 2.2945" * 8


def picture(mode: str, size=(48, 36), seed: int = 0) -> Image.Image:
    pixels = (np.random.default_rng(seed).random((size[1], size[0], 4)) * 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


def gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010E] = "secret description"
    exif.get_ifd(0x8825).update(gps_block(48.8584, 2.2945))
    return exif


def frames_of(data: bytes) -> list[tuple[str, tuple[int, int], bytes]]:
    """Every frame's mode, size and decoded pixels."""
    with Image.open(io.BytesIO(data)) as image:
        return [(frame.mode, frame.size, frame.tobytes()) for frame in ImageSequence.Iterator(image)]


def assert_clean_and_identical(original: bytes, stripped: bytes) -> None:
    for planted in PLANTED:
        assert planted not in stripped, planted
    assert frames_of(stripped) == frames_of(original)
    with Image.open(io.BytesIO(stripped)) as image:
        assert not image.getexif()
        assert not {"comment", "xmp", "exif", "GPSLatitude"} & set(image.info), image.info.keys()
        assert image.info.get("icc_profile") == ICC


# --- JPEG -----------------------------------------------------------------------------------------


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_markers(data: bytes) -> list[int]:
    """The markers of a JPEG's segments in order, entropy-coded data skipped."""
    markers, position = [], 2
    while data[position + 1] != 0xD9:
        marker = data[position + 1]
        markers.append(marker)
        position += 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
        if marker == 0xDA:
            while not (data[position] == 0xFF and data[position + 1] not in (0x00, *range(0xD0, 0xD8))):
                position += 1
    return [*markers, 0xD9]


JUMBF = jpeg_segment(0xEB, b"JP\x00\x01\x00\x00\x00\x01\x00\x00\x00\x40jumb\x00\x00\x00\x18jumdc2pa"
                     b"\x00" * 16 + b"stds.exif GPSLatitude 48.8584")
JFIF_WITH_THUMBNAIL = jpeg_segment(0xE0, b"JFIF\x00\x01\x02\x01\x00\x48\x00\x48\x02\x01" + b"\x10\x20\x30" * 2)
PLANTED_SEGMENTS = [
    JFIF_WITH_THUMBNAIL,
    jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + XMP),
    jpeg_segment(0xE2, b"MPF\x00II*\x00" + b"GPS 48.8584"),  # multi-picture index: points at the second JPEG
    jpeg_segment(0xE3, b"Meta GPS 48.8584"),
    jpeg_segment(0xED, b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x0c\x1c\x02\x5a\x00\x05secret"),
    JUMBF,
    jpeg_segment(0xEF, b"GPS in an application segment nobody has named yet"),
    jpeg_segment(0xFE, b"secret comment"),
]


@pytest.mark.parametrize(("mode", "progressive"), [("RGB", False), ("RGB", True), ("L", True), ("CMYK", False)])
@pytest.mark.parametrize("trailer", [SECOND_JPEG, MOTION_VIDEO], ids=["second_jpeg", "motion_photo"])
def test_a_jpeg_keeps_only_what_decodes_it_and_its_colour_profile(mode, progressive, trailer):
    buffer = io.BytesIO()
    picture(mode).save(buffer, "JPEG", exif=gps_exif(), icc_profile=ICC, comment=b"secret", progressive=progressive,
                       quality=90)
    photo = buffer.getvalue()
    original = photo[:2] + b"".join(PLANTED_SEGMENTS) + photo[2:] + trailer

    stripped = strip_metadata(original)

    assert_clean_and_identical(original, stripped)
    assert stripped.endswith(b"\xff\xd9") and stripped.count(b"\xff\xd8") == 1
    allowed = {0xE0, 0xE2, 0xEE, 0xDB, 0xC4, 0xDD, 0xDA, 0xD9, 0xC0, 0xC1, 0xC2}
    assert set(jpeg_markers(stripped)) <= allowed
    assert (0xEE in jpeg_markers(stripped)) == (mode == "CMYK")  # Adobe's transform: CMYK needs it
    # The JFIF header stays (density), its thumbnail does not.
    assert jpeg_segment(0xE0, JFIF_WITH_THUMBNAIL[4:16] + b"\x00\x00") in stripped
    assert JFIF_WITH_THUMBNAIL not in stripped
    # The entropy-coded data of every scan is the original's, byte for byte.
    start = photo.index(b"\xff\xda")
    assert stripped[stripped.index(b"\xff\xda"):] == photo[start:]


def test_a_truncated_or_malformed_jpeg_is_refused_not_passed_on():
    photo = image_bytes()
    with pytest.raises(MetadataError, match="end-of-image"):
        strip_metadata(photo[:-2])
    with pytest.raises(MetadataError, match="runs past the end"):
        strip_metadata(photo[:2] + b"\xff\xe1\xff\xff" + b"x" * 10)


# --- PNG ------------------------------------------------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_chunks(data: bytes) -> list[bytes]:
    kinds, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        kinds.append(data[position + 4:position + 8])
        position += 12 + length
        if kinds[-1] == b"IEND":
            break
    return kinds


def planted_png(image: Image.Image, **save) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("GPSLatitude", "48.8584")
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info, exif=gps_exif(), icc_profile=ICC, dpi=(300, 300), **save)
    data = buffer.getvalue()
    planted = (png_chunk(b"caBX", JUMBF[4:]) + png_chunk(b"gpSx", b"GPS 48.8584")
               + png_chunk(b"tIME", b"\x07\xe9\x01\x02\x03\x04\x05"))
    after_header = 8 + 25
    return data[:after_header] + planted + data[after_header:] + SECOND_JPEG


@pytest.mark.parametrize("kind", ["RGBA", "palette_with_transparency", "animated"])
def test_a_png_keeps_only_what_decodes_it_and_its_colour_profile(kind):
    if kind == "RGBA":
        original = planted_png(picture("RGBA"))
    elif kind == "palette_with_transparency":
        original = planted_png(picture("P"), transparency=3)
    else:
        frames = [picture("RGB", seed=seed) for seed in range(3)]
        original = planted_png(frames[0], save_all=True, append_images=frames[1:], duration=100)

    stripped = strip_metadata(original)

    assert_clean_and_identical(original, stripped)
    kinds = png_chunks(stripped)
    assert set(kinds) <= DECODING_PNG_CHUNKS and kinds[-1] == b"IEND" and stripped.endswith(png_chunk(b"IEND", b""))
    assert b"iCCP" in kinds and (b"tRNS" in kinds) == (kind == "palette_with_transparency")
    assert (b"fdAT" in kinds) == (kind == "animated")


# --- WebP -----------------------------------------------------------------------------------------


def riff_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) & 1 else b"")


def riff_chunks(data: bytes, start: int, end: int) -> list[tuple[bytes, bytes]]:
    chunks, position = [], start
    while position + 8 <= end:
        kind, (length,) = data[position:position + 4], struct.unpack("<I", data[position + 4:position + 8])
        chunks.append((kind, data[position + 8:position + 8 + length]))
        position += 8 + length + (length & 1)
    return chunks


def webp_of(chunks: list[bytes]) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def planted_webp(animated: bool, lossless: bool) -> bytes:
    """A Pillow WebP with EXIF, XMP and ICC, a C2PA chunk and an unknown one added (inside the first
    animation frame too), and a second JPEG after the RIFF's end."""
    buffer = io.BytesIO()
    frames = [picture("RGBA", seed=seed) for seed in range(2 if animated else 1)]
    frames[0].save(buffer, "WEBP", lossless=lossless, exif=gps_exif(), xmp=XMP, icc_profile=ICC,
                   save_all=animated, append_images=frames[1:], duration=100)
    data = buffer.getvalue()
    chunks = []
    for kind, payload in riff_chunks(data, 12, len(data)):
        if kind == b"ANMF" and not any(k == b"ANMF" for k, _ in chunks):
            payload += riff_chunk(b"GPS ", b"48.8584 2.2945")
        chunks.append((kind, payload))
    planted = [riff_chunk(kind, payload) for kind, payload in chunks]
    planted += [riff_chunk(b"C2PA", JUMBF[4:]), riff_chunk(b"GPS ", b"48.8584 2.2945")]
    return webp_of(planted) + SECOND_JPEG


@pytest.mark.parametrize(("animated", "lossless"), [(False, True), (False, False), (True, True)])
def test_a_webp_keeps_only_what_decodes_it_and_its_colour_profile(animated, lossless):
    original = planted_webp(animated, lossless)

    stripped = strip_metadata(original)

    assert_clean_and_identical(original, stripped)
    chunks = riff_chunks(stripped, 12, len(stripped))
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"VP8X" and b"ICCP" in kinds and set(kinds) <= {b"VP8X", b"ICCP", b"ANIM", b"ANMF",
                                                                         b"VP8 ", b"VP8L", b"ALPH"}
    assert chunks[0][1][0] & 0x0C == 0, "VP8X still announces EXIF or XMP"
    for kind, payload in chunks:
        if kind == b"ANMF":
            assert {k for k, _ in riff_chunks(payload, 16, len(payload))} <= {b"VP8 ", b"VP8L", b"ALPH"}
    assert struct.unpack("<I", stripped[4:8])[0] == len(stripped) - 8


def test_formats_without_an_allow_list_are_refused():
    with pytest.raises(MetadataError, match="not a JPEG, PNG, WebP or GIF"):
        strip_metadata(image_bytes(fmt="TIFF"))
