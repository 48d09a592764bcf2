"""`geoloc catalog decontaminate`: benchmark photos hidden in a catalog are found, the rest is kept."""

import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from datawriters import gps_block, write_files, write_mp16
from PIL import Image
from typer.testing import CliRunner

from geoloc.catalog import BuildOptions, CatalogError, build_catalog, open_store
from geoloc.catalog.decontaminate import SAME_PICTURE_MAX_BITS, decontaminate, perceptual_hash
from geoloc.cli import app

PARIS, SYDNEY, QUITO = (48.8566, 2.3522), (-33.8688, 151.2093), (-0.1807, -78.4678)


def picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like picture: smooth colour fields (a few blobs) with sensor-like noise; each seed its own."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    noise = rng.integers(-20, 20, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(coarse, int) + noise, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int = 95, gps: tuple[float, float] | None = None) -> bytes:
    exif = Image.Exif()
    if gps is not None:
        exif[0x8825] = gps_block(*gps)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, exif=exif.tobytes())
    return buffer.getvalue()


def copies(seed: int, gps: tuple[float, float]) -> dict[str, bytes]:
    """The benchmark photo `seed` as a leak may hide it: quality 60, half size, both (with GPS added)."""
    original = picture(seed)
    half = original.resize((160, 120))
    return {"q60": jpeg(original, 60, gps), "half": jpeg(half, 95, gps),
            "half_q60": jpeg(half, 60, gps)}


@pytest.fixture
def world(tmp_path) -> dict[str, Path]:
    benchmark = tmp_path / "im2gps3k"
    write_files(benchmark, {f"b{seed}.jpg": jpeg(picture(seed)) for seed in (1, 2)})
    # photos source (GPS in EXIF): benchmark photo 1 re-encoded, and resized, among unrelated photos
    one, two = copies(1, SYDNEY), copies(2, SYDNEY)
    photos = tmp_path / "photos"
    write_files(photos, {"trip/one_q60.jpg": one["q60"], "trip/one_half.jpg": one["half"],
                         **{f"trip/other{seed}.jpg": jpeg(picture(seed), gps=SYDNEY) for seed in range(10, 16)}})
    # shards (MP-16 layout): photo 1 at half size and quality 60, photo 2 at quality 60, unrelated ones
    mp16 = tmp_path / "mp16"
    shard_photos = [("a/1.jpg", one["half_q60"]), ("a/2.jpg", two["q60"])] + [
        (f"a/u{seed}.jpg", jpeg(picture(seed))) for seed in range(20, 26)]
    write_mp16(mp16, shards=[shard_photos[:4], shard_photos[4:]],
               metadata=[{"IMG_ID": name, "LAT": QUITO[0], "LON": QUITO[1]} for name, _ in shard_photos])
    catalog = tmp_path / "catalog"
    build_catalog([("photos", photos), ("mp16", mp16)], catalog, BuildOptions(work_dir=catalog / ".work", workers=1))
    return {"catalog": catalog, "benchmark": benchmark, "root": tmp_path}


def test_every_planted_copy_is_found_and_every_unrelated_photo_kept(world, tmp_path):
    out = tmp_path / "clean"
    summary = decontaminate(world["catalog"], [world["benchmark"]], out, options=BuildOptions(
        work_dir=out / ".work", workers=1))
    leaks = pl.read_parquet(out / "leaks.parquet")
    found = dict(leaks.select("image_id", "benchmark_image").iter_rows())
    assert found == {"trip/one_q60.jpg": "im2gps3k/b1.jpg", "trip/one_half.jpg": "im2gps3k/b1.jpg",
                     "a/1.jpg": "im2gps3k/b1.jpg", "a/2.jpg": "im2gps3k/b2.jpg"}
    assert set(leaks["reason"]) == {"same_picture"}
    assert (leaks["distance"] <= SAME_PICTURE_MAX_BITS).all()
    clean = pl.read_parquet(out / "catalog.parquet")
    original = pl.read_parquet(world["catalog"] / "catalog.parquet")
    assert clean.schema == original.schema
    assert sorted(clean["image_id"]) == sorted(set(original["image_id"]) - set(found))
    assert summary.kept == clean.height and summary.removed == {"same_bytes": 0, "same_picture": 4, "too_close": 0}
    # later stages open the clean catalog's photos, shards included
    uri = clean.filter(pl.col("image_id") == "a/u20.jpg")["uri"][0]
    assert open_store(out, "mp16").read_bytes(uri) == open_store(world["catalog"], "mp16").read_bytes(uri)


def test_same_bytes_and_too_close(world, tmp_path):
    catalog = world["catalog"]
    frame = pl.read_parquet(catalog / "catalog.parquet")
    same_bytes = world["root"] / "same_bytes"
    uri = frame.filter(pl.col("image_id") == "a/u20.jpg")["uri"][0]
    write_files(same_bytes, {"x.jpg": open_store(catalog, "mp16").read_bytes(uri)})
    truth = world["root"] / "truth.csv"
    pl.DataFrame({"IMG_ID": ["near_sydney.jpg"], "LAT": [SYDNEY[0] + 0.05], "LON": [SYDNEY[1]]}).write_csv(truth)
    out = tmp_path / "clean"
    summary = decontaminate(catalog, [same_bytes, truth, world["benchmark"]], out, radius_km=10.0,
                            options=BuildOptions(work_dir=out / ".work", workers=1))
    leaks = pl.read_parquet(out / "leaks.parquet")
    reasons = dict(leaks.select("image_id", "reason").iter_rows())
    assert reasons["a/u20.jpg"] == "same_bytes"  # its bytes win over any other reason
    assert reasons["trip/one_q60.jpg"] == "same_picture"  # within 10 km too, but the stronger reason is kept
    assert all(reasons[f"trip/other{seed}.jpg"] == "too_close" for seed in range(10, 16))
    close = leaks.filter(pl.col("reason") == "too_close")["distance"]
    assert ((close > 5.0) & (close < 6.0)).all()  # 0.05 degrees of latitude: 5.56 km
    assert summary.removed == {"same_bytes": 1, "same_picture": 4, "too_close": 6}


def test_resumes_from_the_cached_hashes(world, tmp_path, monkeypatch):
    out = tmp_path / "clean"
    options = BuildOptions(work_dir=out / ".work", workers=1)
    decontaminate(world["catalog"], [world["benchmark"]], out, options=options)
    first = pl.read_parquet(out / "leaks.parquet")
    import geoloc.catalog.decontaminate as module

    def no_decoding(*_):
        raise AssertionError("a finished chunk was decoded again")

    monkeypatch.setattr(module, "hash_photos", no_decoding)
    decontaminate(world["catalog"], [world["benchmark"]], out, options=options)
    assert pl.read_parquet(out / "leaks.parquet").equals(first)


def test_bad_arguments_are_clear_errors(world, tmp_path):
    with pytest.raises(CatalogError, match="needs at least one benchmark table"):
        decontaminate(world["catalog"], [world["benchmark"]], tmp_path / "x", radius_km=5)
    with pytest.raises(CatalogError, match="no such file or folder"):
        decontaminate(world["catalog"], [tmp_path / "nowhere"], tmp_path / "x")
    with pytest.raises(CatalogError, match="catalog's own folder"):
        decontaminate(world["catalog"], [world["benchmark"]], world["catalog"])


def test_perceptual_hash_reads_the_picture_not_the_bytes():
    original = picture(7)
    assert perceptual_hash(jpeg(original)) == perceptual_hash(jpeg(original, gps=PARIS))
    apart = bin(perceptual_hash(jpeg(original)) ^ perceptual_hash(jpeg(picture(8)))).count("1")
    assert apart > 2 * SAME_PICTURE_MAX_BITS


def test_cli_prints_counts_per_reason(world, tmp_path):
    result = CliRunner().invoke(app, ["catalog", "decontaminate", "--catalog", str(world["catalog"]), "--against",
                                      str(world["benchmark"]), "--out", str(tmp_path / "clean"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "same_picture" in result.output and "4" in result.output
    failed = CliRunner().invoke(app, ["catalog", "decontaminate", "--catalog", str(world["catalog"]), "--against",
                                      str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert failed.exit_code != 0 and "no such file or folder" in failed.output
