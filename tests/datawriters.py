"""Writers of small but real datasets in each source's published layout, for tests and benchmarks.

Everything is made with the real formats: JPEG/PNG/TIFF/HEIC encoded by Pillow (and
pillow-heif) with EXIF GPS blocks written by Pillow, MessagePack shards by msgpack,
tar archives by tarfile.
"""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import msgpack
import polars as pl
from PIL import ExifTags, Image, TiffImagePlugin

Rational = TiffImagePlugin.IFDRational


def dms(value: float) -> tuple[Rational, Rational, Rational]:
    """Degrees, minutes and seconds rationals, the common camera encoding."""
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = Fraction((value - degrees - minutes / 60) * 3600).limit_denominator(10_000)
    return Rational(degrees, 1), Rational(minutes, 1), Rational(seconds.numerator, seconds.denominator)


def gps_block(lat: float, lon: float, encoding: str = "dms") -> dict[int, object]:
    """A GPS IFD for (lat, lon): `dms`, `degrees` (one rational) or `decimal_minutes` (d, m.mmmm, 0)."""
    def encode(value: float):
        if encoding == "dms":
            return dms(value)
        if encoding == "degrees":
            return (Rational(Fraction(abs(value)).limit_denominator(10_000_000)),)
        if encoding == "decimal_minutes":
            degrees = int(abs(value))
            minutes = Fraction((abs(value) - degrees) * 60).limit_denominator(1_000_000)
            return Rational(degrees, 1), Rational(minutes.numerator, minutes.denominator), Rational(0, 1)
        raise ValueError(encoding)

    return {
        ExifTags.GPS.GPSLatitudeRef: "N" if lat >= 0 else "S",
        ExifTags.GPS.GPSLatitude: encode(lat),
        ExifTags.GPS.GPSLongitudeRef: "E" if lon >= 0 else "W",
        ExifTags.GPS.GPSLongitude: encode(lon),
    }


def image_bytes(gps: dict[int, object] | None = None, fmt: str = "JPEG", size: tuple[int, int] = (32, 24),
                color: tuple[int, int, int] = (200, 120, 40), label: str = "") -> bytes:
    """A real encoded image, with an EXIF block holding `gps` when given and `label` as its description."""
    image = Image.new("RGB", size, color)
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "geoloc-test"
    exif[ExifTags.Base.ImageDescription] = label or "test image"
    if gps is not None:
        exif[ExifTags.IFD.GPSInfo] = gps
    buffer = io.BytesIO()
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    image.save(buffer, fmt, exif=exif.tobytes())
    return buffer.getvalue()


def photo(lat: float, lon: float, encoding: str = "dms", fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A photo whose EXIF says (lat, lon); photos with different seeds have different bytes."""
    return image_bytes(gps_block(lat, lon, encoding), fmt, color=(seed % 256, 90, 77), label=f"photo {seed}")


def write_files(root: Path, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def write_shard(path: Path, records: Sequence[dict[str, object]], truncate_last: int = 0) -> None:
    """Records packed back to back, as MP-16's shard_*.msg; `truncate_last` cuts bytes off the end."""
    data = b"".join(msgpack.packb(record, use_bin_type=True) for record in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) - truncate_last])


def write_mp16(root: Path, shards: Sequence[Sequence[tuple[str, bytes]]], metadata: Iterable[dict[str, object]],
               truncate_last: int = 0) -> None:
    """MP-16 layout: shard_00000.msg ... with {id, image} records, and MP16_Pro_places365.csv (IMG_ID, LAT, LON ...)."""
    for number, records in enumerate(shards):
        write_shard(root / f"shard_{number:05d}.msg", [{"id": i, "image": b} for i, b in records],
                    truncate_last if number == len(shards) - 1 else 0)
    pl.DataFrame(list(metadata)).write_csv(root / "MP16_Pro_places365.csv")


OSV5M_COLUMNS = (
    "id", "latitude", "longitude", "thumb_original_url", "country", "sequence", "captured_at", "lon_bin", "lat_bin",
    "cell", "land_cover", "road_index", "drive_side", "climate", "soil", "dist_sea", "region", "sub-region", "city",
    "unique_region", "unique_sub-region", "unique_city", "unique_country", "creator_username", "creator_id",
)
"""OpenStreetView-5M's train.csv / test.csv columns, in its order."""


def osv5m_row(photo_id: str, lat: float, lon: float, country: str, region: str = "", city: str = "") -> dict:
    """A CSV row as OSV-5M writes it: its own place labels, the other columns plausible filler."""
    row = {column: "" for column in OSV5M_COLUMNS}
    row.update({
        "id": photo_id, "latitude": lat, "longitude": lon, "country": country, "region": region, "city": city,
        "thumb_original_url": f"https://example.org/{photo_id}.jpg", "drive_side": 0, "land_cover": 4,
        "unique_country": country, "unique_region": f"{region}_{country}" if region else "nan",
        "unique_sub-region": "nan", "unique_city": f"{city}_{region}_{country}" if city else "nan",
    })
    return row


def write_osv5m(root: Path, split: str, zips: Sequence[Sequence[tuple[str, bytes]]], rows: Iterable[dict],
                compression: int = zipfile.ZIP_STORED) -> list[Path]:
    """OSV-5M layout: `<split>.csv` and `images/<split>/00.zip` ... holding `<id>.jpg` members."""
    root.mkdir(parents=True, exist_ok=True)
    table = [{column: str(row[column]) for column in OSV5M_COLUMNS} for row in rows]
    pl.DataFrame(table, schema=dict.fromkeys(OSV5M_COLUMNS, pl.Utf8)).write_csv(root / f"{split}.csv")
    paths = []
    for number, members in enumerate(zips):
        path = root / "images" / split / f"{number:02d}.zip"
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", compression=compression) as archive:
            for name, data in members:
                archive.writestr(name, data)
        paths.append(path)
    return paths


def gldv2_path(image_id: str) -> str:
    return f"train/{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


def write_gldv2(root: Path, images: dict[str, tuple[int, bytes | None]], categories: dict[int, str]) -> None:
    """GLDv2 layout: train.csv (id,url,landmark_id), train_label_to_category.csv, train/a/b/c/<id>.jpg.

    `images` maps id -> (landmark_id, bytes or None for a listed image that is not on disk).
    """
    pl.DataFrame({
        "id": list(images),
        "url": [f"https://example.org/{i}.jpg" for i in images],
        "landmark_id": [landmark for landmark, _ in images.values()],
    }).write_csv(root / "train.csv")
    pl.DataFrame({
        "landmark_id": list(categories),
        "category": [f"http://commons.wikimedia.org/wiki/Category:{name}" for name in categories.values()],
    }).write_csv(root / "train_label_to_category.csv")
    write_files(root, {gldv2_path(i): data for i, (_, data) in images.items() if data is not None})


def write_wwgeotag(root: Path, files: dict[str, bytes]) -> None:
    """World-wide geotag layout: folders 1, 2 ... of photos beside spacial-index and stray CSV/PDF files."""
    write_files(root, files)
    write_files(root, {"spacial-index/index.dat": b"\x00" * 64, "readme.pdf": b"%PDF-1.4\n", "list.csv": b"a,b\n1,2\n"})


def write_tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def write_georanker_csv(path, rows: list[dict]) -> None:
    """The layout GeoRanker's compile script writes: Python's str() of each list, in a CSV cell."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["IMG_ID", "LAT", "LON", "candidate_gps_lis",
                                                    "candidate_text_lis", "reverse_gps_lis", "zs_gps_lis",
                                                    "candidate_img_lis"])
        writer.writeheader()
        for row in rows:
            writer.writerow({key: str(value) if isinstance(value, list) else value for key, value in row.items()})
