"""`geoloc catalog decontaminate`: a copy of a catalog without the photos that leak a benchmark.

MP-16 and YFCC4K both come from YFCC100M and IM2GPS photos are Flickr photos too, so a
training catalog can hold benchmark photos: the same file, the same picture re-encoded
or resized, or (OSV-5M's rule) a photo taken within R km of a benchmark photo. Each
catalog photo is matched against every benchmark photo three ways, vectorized:

- same bytes: the catalog's `content_hash` joined with the benchmark files' hashes;
- same picture: 64-bit perceptual hashes (imagehash's DCT `phash`) at most
  `SAME_PICTURE_MAX_BITS` bits apart, searched exactly with FAISS's binary index;
- too close: nearest benchmark location on unit vectors (a KD-tree), below R km.

Decoding the catalog's photos for their perceptual hashes is the costly part: it runs
in chunks cached under the output's .work folder, on worker processes or Ray, exactly
as `catalog build` scans, so a killed run resumes.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageOps
from scipy.spatial import cKDTree

from geoloc.catalog.build import CATALOG_FILE, SOURCES_FILE, executor, open_store
from geoloc.catalog.sources import BuildOptions, CatalogError
from geoloc.geo import chord_to_km, to_unit_vectors
from geoloc.images import content_hash, list_files
from geoloc.resumable import Task, cache_key, run_cached
from geoloc.tables import TRUTH_LAYOUTS, read_table, select_layout, write_table

SAME_PICTURE_MAX_BITS = 8
"""Perceptual hashes this many bits apart or fewer are one picture. Copies re-encoded at
quality 60, halved, or both, differ by 0 to 2 bits in the tests; unrelated photos by 14
or more."""

LEAKS_FILE = "leaks.parquet"
LEAK_REASONS = ("same_bytes", "same_picture", "too_close")
HASH_CHUNK_ROWS = 5_000
Matches = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(catalog row, benchmark row, distance) of each match."""


@dataclass(frozen=True)
class DecontaminationSummary:
    """Catalog rows kept, and leaking rows removed per reason."""

    kept: int
    removed: dict[str, int]


def perceptual_hash(data: bytes) -> int:
    """The 64-bit DCT perceptual hash of an encoded photo, upright as its EXIF says.

    JPEGs are decoded at a reduced scale (`draft`): the hash reads a 32x32 thumbnail,
    so full-size decoding would only cost time.
    """
    import imagehash

    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (128, 128))
        upright = ImageOps.exif_transpose(image).convert("L")
    bits = imagehash.phash(upright).hash.flatten()
    return int(np.packbits(bits).view(">u8")[0])


def perceptual_hash_or_none(data: bytes) -> int | None:
    """The photo's perceptual hash, or None for bytes that do not decode (they can still match as bytes)."""
    try:
        return perceptual_hash(data)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def hash_photos(catalog_dir: str, source: str, uris: list[str]) -> pl.DataFrame:
    """One task: (uri, phash) of each photo of `source` that decodes; phash is null where it does not."""
    store = open_store(Path(catalog_dir), source)
    hashes: list[int | None] = []
    for uri in uris:
        try:
            hashes.append(perceptual_hash_or_none(store.read_bytes(uri)))
        except (OSError, ValueError):
            hashes.append(None)
    return pl.DataFrame({"source": source, "uri": uris, "phash": pl.Series(hashes, dtype=pl.UInt64)})


def read_benchmark(path: Path) -> pl.DataFrame:
    """A benchmark as (benchmark_image, content_hash, phash, lat, lon): a folder of photos or a truth table."""
    if path.is_dir():
        names = list_files(path)
        if not names:
            raise CatalogError(f"--against {path}: no photos in this folder")
        byte_hashes: list[str] = []
        hashes: list[int | None] = []
        for name in names:  # one photo in memory at a time: a benchmark folder can hold gigabytes
            blob = (path / name).read_bytes()
            byte_hashes.append(content_hash(blob))
            hashes.append(perceptual_hash_or_none(blob))
        return pl.DataFrame({
            "benchmark_image": [f"{path.name}/{name}" for name in names],
            "content_hash": byte_hashes,
            "phash": pl.Series(hashes, dtype=pl.UInt64),
            "lat": pl.Series([None] * len(names), dtype=pl.Float64),
            "lon": pl.Series([None] * len(names), dtype=pl.Float64),
        })
    if not path.is_file():
        raise CatalogError(f"--against {path}: no such file or folder")
    table = select_layout(read_table(path), path, TRUTH_LAYOUTS)
    return table.select(
        pl.format("{}/{}", pl.lit(path.name), "image_id").alias("benchmark_image"),
        pl.lit(None, dtype=pl.Utf8).alias("content_hash"), pl.lit(None, dtype=pl.UInt64).alias("phash"),
        pl.col("lat").cast(pl.Float64), pl.col("lon").cast(pl.Float64),
    )


def catalog_hashes(catalog_dir: Path, catalog: pl.DataFrame, options: BuildOptions) -> pl.DataFrame:
    """(source, uri, phash) of every catalog photo, decoded in cached chunks."""
    tasks = []
    for (source,), rows in catalog.group_by("source", maintain_order=True):
        open_store(catalog_dir, source)  # builds a member index's lookup cache once, before the workers map it
        uris = rows["uri"].to_list()
        for start in range(0, len(uris), HASH_CHUNK_ROWS):
            chunk = uris[start : start + HASH_CHUNK_ROWS]
            key = cache_key("phash", source, chunk[0], chunk[-1], len(chunk), content_hash("\n".join(chunk).encode()))
            tasks.append(Task(key, hash_photos, (str(catalog_dir.resolve()), source, chunk)))
    with executor(options) as workers:
        frames = run_cached(tasks, options.work_dir / "phash", workers, "perceptual hashes")
    if not frames:
        return pl.DataFrame(schema={"source": pl.Utf8, "uri": pl.Utf8, "phash": pl.UInt64})
    return pl.concat(frames).unique(["source", "uri"], keep="first")


def _hash_bytes(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes as the (n, 8) uint8 rows FAISS's binary indexes take, most significant byte first."""
    return np.ascontiguousarray(hashes.astype(">u8")).view(np.uint8).reshape(-1, 8)


def same_pictures(catalog_hashes: np.ndarray, benchmark_hashes: np.ndarray) -> Matches:
    """(catalog row, benchmark row, bits apart) of each catalog hash's nearest benchmark hash within the threshold."""
    try:
        import faiss
    except ImportError as error:
        raise CatalogError("matching perceptual hashes needs faiss: pip install 'geoloc[models]'") from error

    empty = np.empty(0, dtype=np.int64)
    if not len(catalog_hashes) or not len(benchmark_hashes):
        return empty, empty, empty
    index = faiss.IndexBinaryFlat(64)
    index.add(_hash_bytes(benchmark_hashes))
    bits, nearest = index.search(_hash_bytes(catalog_hashes), 1)
    close = bits[:, 0] <= SAME_PICTURE_MAX_BITS
    return np.flatnonzero(close), nearest[close, 0].astype(np.int64), bits[close, 0].astype(np.int64)


def too_close(catalog: pl.DataFrame, benchmark: pl.DataFrame, radius_km: float) -> Matches:
    """(catalog row, benchmark row, km) of each catalog photo closer than `radius_km` to a benchmark location."""
    tree = cKDTree(to_unit_vectors(benchmark["lat"].to_numpy(), benchmark["lon"].to_numpy()))
    chord, nearest = tree.query(to_unit_vectors(catalog["lat"].to_numpy(), catalog["lon"].to_numpy()), k=1)
    km = chord_to_km(chord)
    close = km < radius_km
    return np.flatnonzero(close), nearest[close].astype(np.int64), km[close]


def find_leaks(catalog: pl.DataFrame, hashes: pl.DataFrame, benchmark: pl.DataFrame,
               radius_km: float | None) -> pl.DataFrame:
    """One row per leaking catalog photo, the strongest reason first: same bytes, same picture, too close."""
    catalog = catalog.with_row_index("_row")
    found = [catalog.join(benchmark.filter(pl.col("content_hash").is_not_null()), on="content_hash").select(
        "_row", "benchmark_image", pl.lit("same_bytes").alias("reason"), pl.lit(0.0).alias("distance"))]
    hashed = catalog.select("_row", "uri", "source").join(hashes, on=["uri", "source"]).filter(
        pl.col("phash").is_not_null())
    pictures = benchmark.filter(pl.col("phash").is_not_null())
    rows, matches, bits = same_pictures(hashed["phash"].to_numpy(), pictures["phash"].to_numpy())
    found.append(pl.DataFrame({
        "_row": hashed["_row"].to_numpy()[rows], "benchmark_image": pictures["benchmark_image"].to_numpy()[matches],
        "reason": ["same_picture"] * len(rows), "distance": bits.astype(np.float64),
    }, schema_overrides={"_row": pl.UInt32}))
    if radius_km is not None:
        located = benchmark.filter(pl.col("lat").is_not_null())
        rows, matches, km = too_close(catalog, located, radius_km)
        found.append(pl.DataFrame({
            "_row": catalog["_row"].to_numpy()[rows], "benchmark_image": located["benchmark_image"].to_numpy()[matches],
            "reason": ["too_close"] * len(rows), "distance": km,
        }, schema_overrides={"_row": pl.UInt32}))
    leaks = pl.concat([frame.cast({"_row": pl.UInt32, "distance": pl.Float64}) for frame in found])
    order = pl.col("reason").replace_strict({reason: i for i, reason in enumerate(LEAK_REASONS)}, return_dtype=pl.Int8)
    leaks = leaks.sort([pl.col("_row"), order, pl.col("distance")]).unique("_row", keep="first", maintain_order=True)
    return leaks.join(catalog.select("_row", "image_id", "uri"), on="_row").select(
        "_row", "image_id", "uri", "benchmark_image", "reason", "distance")


def decontaminate(catalog_dir: Path, against: list[Path], out: Path, radius_km: float | None = None,
                  options: BuildOptions | None = None) -> DecontaminationSummary:
    """Write `out`/catalog.parquet (the catalog less its leaks, same schema) and `out`/leaks.parquet."""
    if not against:
        raise CatalogError("no --against given: name a folder of benchmark photos or a benchmark truth table")
    if radius_km is not None and radius_km <= 0:
        raise CatalogError(f"--radius-km {radius_km}: must be positive")
    if out.resolve() == catalog_dir.resolve():
        raise CatalogError(f"--out {out} is the catalog's own folder; write the clean copy elsewhere")
    benchmark = pl.concat([read_benchmark(path) for path in against])
    if radius_km is not None and benchmark["lat"].is_null().all():
        raise CatalogError("--radius-km needs at least one benchmark table with coordinates (image_id, lat, lon)")
    catalog = read_table(catalog_dir / CATALOG_FILE)
    options = options or BuildOptions(work_dir=out / ".work")
    hashes = catalog_hashes(catalog_dir, catalog, options)
    leaks = find_leaks(catalog, hashes, benchmark, radius_km)
    out.mkdir(parents=True, exist_ok=True)
    clean = catalog.with_row_index("_row").join(leaks.select("_row"), on="_row", how="anti").drop("_row")
    write_table(clean, out / CATALOG_FILE)
    write_table(leaks.drop("_row"), out / LEAKS_FILE)
    shutil.copy2(catalog_dir / SOURCES_FILE, out / SOURCES_FILE)
    if (catalog_dir / "indexes").is_dir():
        shutil.copytree(catalog_dir / "indexes", out / "indexes", dirs_exist_ok=True)
    removed = dict(leaks.group_by("reason").len().iter_rows())
    return DecontaminationSummary(clean.height, {reason: removed.get(reason, 0) for reason in LEAK_REASONS})
