"""One reader per published source layout, each returning candidate rows in one shape.

A candidate row has `image_id`, `uri`, `lat`, `lon`, `content_hash`, and a `reason`
(null while the row looks good so far) with a `detail`; sources add their own columns
(`landmark_id`, the MP-16 and OSV-5M metadata). Checks common to all sources (coordinates,
duplicates) happen once, in `geoloc.catalog.build`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from geoloc.catalog.scan import BAD_URI, CHUNK_FILES, MISSING_IMAGE, malformed_uri, scan_files
from geoloc.errors import InputError
from geoloc.images import (
    CORRUPT_IMAGE,
    GPS_PROBLEMS,
    IMAGE_SUFFIXES,
    MEMBER_SEPARATOR,
    index_shard,
    index_zip,
    list_files,
)
from geoloc.resumable import Executor, Task, cache_key, run_cached
from geoloc.tables import read_table, select_layout

MISSING_METADATA = "missing_metadata"
NO_GPS = "no_gps"
UNRESOLVED_LANDMARK = "unresolved_landmark"
COORDINATES_DETAIL = "coordinates_detail"
"""A candidate column: why a row's lat / lon cell is unusable text (null when it is a number or empty)."""

CANDIDATE_COLUMNS = ("image_id", "uri", "lat", "lon", "content_hash", "reason", "detail")

MP16_METADATA_LAYOUTS = [{"IMG_ID": "image_id", "LAT": "lat", "LON": "lon"}]
OSV5M_LAYOUTS = [{"id": "image_id", "latitude": "lat", "longitude": "lon"}]
OSV5M_SPLITS = ("train", "test")
GLDV2_TRAIN_LAYOUTS = [{"id": "image_id", "landmark_id": "landmark_id"}]
LANDMARK_COORDS_LAYOUTS = [{"landmark_id": "landmark_id", "lat": "lat", "lon": "lon"}]


class CatalogError(InputError):
    """A source does not follow its documented layout, or the build was misconfigured."""


@dataclass(frozen=True)
class BuildOptions:
    """Everything a reader may need besides its folder."""

    work_dir: Path
    workers: int = 2
    """Processes that scan files and shards (local engine)."""
    engine: str = "local"
    """`local` (a process pool on this machine) or `ray` (Ray Data tasks on a Ray cluster)."""
    ray_address: str | None = None
    """The Ray cluster for the ray engine (`auto`, `ray://HEAD:10001`); None starts a local Ray."""
    chunk_files: int = CHUNK_FILES
    landmark_coords: Path | None = None
    csv_id_column: str = "path"
    csv_lat_column: str = "lat"
    csv_lon_column: str = "lon"
    csv_image_root: Path | None = None
    osv5m_split: str = "train"
    """Which OSV-5M split the `osv5m` source reads: `train` or `test`."""


@dataclass
class SourceRows:
    """A reader's candidates, and the member index needed to open them later (MessagePack shards, zips)."""

    candidates: pl.DataFrame
    member_index: pl.DataFrame | None = field(default=None)


def _first_reason(*rules: tuple[pl.Expr, pl.Expr | str, pl.Expr | str]) -> tuple[pl.Expr, pl.Expr]:
    """`reason` and `detail` columns: the first rule whose condition holds, else null."""
    reason: pl.Expr = pl.lit(None, dtype=pl.Utf8)
    detail: pl.Expr = pl.lit(None, dtype=pl.Utf8)
    for condition, name, text in reversed(rules):
        reason = pl.when(condition).then(pl.lit(name) if isinstance(name, str) else name).otherwise(reason)
        detail = pl.when(condition).then(pl.lit(text) if isinstance(text, str) else text).otherwise(detail)
    return reason.alias("reason"), detail.alias("detail")


def _coordinates(frame: pl.DataFrame) -> pl.DataFrame:
    """lat and lon as float64. Text that is not a number becomes null and is named in COORDINATES_DETAIL
    (the row's quarantine detail, as bad_coordinates): one such cell refuses its row, not the whole table."""
    numbers, problems = [], []
    for column in ("lat", "lon"):
        if frame.schema[column] != pl.Utf8:
            numbers.append(pl.col(column).cast(pl.Float64))
            continue
        text = pl.col(column).str.strip_chars()
        numbers.append(text.cast(pl.Float64, strict=False))
        problems.append(pl.when((text != "") & numbers[-1].is_null())
                        .then(pl.format(f"{column} '{{}}' is not a number", text.str.slice(0, 40))))
    detail = pl.concat_str(problems, separator="; ", ignore_nulls=True) if problems else pl.lit("")
    return frame.with_columns(pl.when(detail != "").then(detail).alias(COORDINATES_DETAIL)).with_columns(numbers)


def _single_csv(folder: Path) -> Path:
    tables = sorted(folder.glob("*.csv"))
    if len(tables) != 1:
        found = ", ".join(p.name for p in tables) or "none"
        raise CatalogError(f"{folder}: expected exactly one metadata CSV (IMG_ID, LAT, LON) beside the shards; "
                           f"found {found}")
    return tables[0]


def _index_containers(paths: list[Path], root: Path, indexer: Callable[[str, str], pl.DataFrame],
                      options: BuildOptions, workers: Executor, cache: str, what: str) -> pl.DataFrame:
    """The member index of every container (named relative to `root`), each indexed once and cached."""
    tasks = [
        Task(cache_key(path.resolve(), path.stat().st_size, path.stat().st_mtime_ns), indexer,
             (str(path), path.relative_to(root).as_posix()))
        for path in paths
    ]
    return pl.concat(run_cached(tasks, options.work_dir / cache, workers, f"indexing {what}"))


def _members_with_metadata(index: pl.DataFrame, metadata: pl.DataFrame, member_id: pl.Expr,
                           metadata_name: str, id_header: str) -> pl.DataFrame:
    """Each indexed member joined by `member_id` to its metadata row (coordinates and the rest).

    A metadata id naming no file (its `id_header` cell empty or holding a NUL byte) is a bad uri, an
    unreadable member a corrupt image, a listed photo in no container a missing image, and a member
    the metadata does not list has missing metadata.
    """
    images = index.select(
        member_id.alias("image_id"),
        (pl.col("container") + MEMBER_SEPARATOR + pl.col("member")).alias("uri"),
        "content_hash", pl.col("problem").alias("_problem"), pl.col("detail").alias("_detail"),
    )
    listed = metadata.with_columns(pl.lit(True).alias("_listed"))
    joined = images.join(listed, on="image_id", how="full", coalesce=True, maintain_order="left_right")
    bad_id = malformed_uri(pl.col("image_id"), id_header)
    reason, detail = _first_reason(
        (bad_id.is_not_null(), BAD_URI, pl.concat_str(bad_id, pl.lit(f" in {metadata_name}"))),
        (pl.col("_problem").is_not_null(), CORRUPT_IMAGE, pl.col("_detail")),
        (pl.col("uri").is_null(), MISSING_IMAGE, f"listed in {metadata_name}, in no container"),
        (pl.col("_listed").is_null(), MISSING_METADATA, f"not in {metadata_name}"),
    )
    return joined.with_columns(reason, detail).drop("_problem", "_detail", "_listed")


def _metadata(path: Path, layouts: list[dict[str, str]]) -> pl.DataFrame:
    """A metadata table in one of `layouts` (renamed to image_id, lat, lon), its other columns kept."""
    raw = read_table(path)
    extras = [c for c in raw.columns if all(c not in layout for layout in layouts)]
    return _coordinates(pl.concat([select_layout(raw, path, layouts), raw.select(extras)], how="horizontal"))


def read_mp16(root: Path, options: BuildOptions, workers: Executor) -> SourceRows:
    """`shard_*.msg` MessagePack shards of {id, image} records plus one metadata CSV (IMG_ID, LAT, LON, ...)."""
    shards = sorted(root.glob("shard_*.msg"))
    if not shards:
        raise CatalogError(f"{root}: no shard_*.msg files (MP-16 layout: shard_*.msg and a metadata CSV)")
    metadata_path = _single_csv(root)
    index = _index_containers(shards, root, index_shard, options, workers, "mp16-shards", "MP-16 shards")
    metadata = _metadata(metadata_path, MP16_METADATA_LAYOUTS)
    return SourceRows(_members_with_metadata(index, metadata, pl.col("member"), metadata_path.name,
                                              "IMG_ID"), index)


def read_osv5m(root: Path, options: BuildOptions, workers: Executor) -> SourceRows:
    """OpenStreetView-5M: `<split>.csv` (id, latitude, longitude, unique_country, ...) and the photos as
    `<id>.jpg` members of `images/<split>/NN.zip`, read in place; the CSV's other columns are kept."""
    split = options.osv5m_split
    if split not in OSV5M_SPLITS:
        raise CatalogError(f"--osv5m-split {split!r}: expected one of {', '.join(OSV5M_SPLITS)}")
    table_path = root / f"{split}.csv"
    zips = sorted((root / "images" / split).glob("*.zip"))
    if not table_path.is_file() or not zips:
        raise CatalogError(f"{root}: expected {split}.csv and images/{split}/NN.zip (OSV-5M layout)")
    index = _index_containers(zips, root, index_zip, options, workers, f"osv5m-{split}-zips",
                              f"OSV-5M {split} zips")
    photo_id = (  # `<id>.jpg`, in whatever folder; an unreadable zip's row is named by the zip
        pl.when(pl.col("member").str.starts_with("@"))
        .then(pl.col("container") + MEMBER_SEPARATOR + pl.col("member"))
        .otherwise(pl.col("member").str.extract(r"([^/]+)\.[^./]+$").fill_null(pl.col("member")))
    )
    metadata = _metadata(table_path, OSV5M_LAYOUTS)
    return SourceRows(_members_with_metadata(index, metadata, photo_id, table_path.name, "id"), index)


def _landmark_coordinates(options: BuildOptions) -> pl.DataFrame:
    path = options.landmark_coords
    if path is None:
        raise CatalogError("gldv2 needs --landmark-coords (landmark_id,lat,lon; `geoloc landmarks resolve` writes it)")
    coords = _coordinates(select_layout(read_table(path), path, LANDMARK_COORDS_LAYOUTS))
    return coords.unique("landmark_id", keep="first", maintain_order=True).with_columns(pl.lit(True).alias("_resolved"))


def read_gldv2(root: Path, options: BuildOptions, workers: Executor) -> SourceRows:
    """train.csv (id, url, landmark_id), images at train/<id[0]>/<id[1]>/<id[2]>/<id>.jpg, coordinates per landmark."""
    train_path = root / "train.csv"
    train = select_layout(read_table(train_path), train_path, GLDV2_TRAIN_LAYOUTS)
    coords = _landmark_coordinates(options)
    bad_id = malformed_uri(pl.col("image_id"), "id")
    train = train.with_columns(
        pl.when(bad_id.is_null())
        .then(pl.format("train/{}/{}/{}/{}.jpg", *(pl.col("image_id").str.slice(i, 1) for i in range(3)), "image_id"))
        .alias("uri")
    )
    scanned = scan_files(root, train["uri"].to_list(), False, options.work_dir / "gldv2-files", workers,
                         "checking GLDv2 images", options.chunk_files)
    joined = (
        train.join(scanned.select("uri", "content_hash", "problem", pl.col("detail").alias("_detail")),
                   on="uri", how="left", maintain_order="left", nulls_equal=True)
        .join(coords, on="landmark_id", how="left", maintain_order="left")
    )
    reason, detail = _first_reason(
        (bad_id.is_not_null(), BAD_URI, pl.concat_str(bad_id, pl.lit(f" in {train_path.name}"))),
        (pl.col("problem").is_not_null(), pl.col("problem"), pl.col("_detail")),
        (pl.col("_resolved").is_null(), UNRESOLVED_LANDMARK,
         pl.format("no coordinates for landmark {}", "landmark_id")),
    )
    return SourceRows(joined.with_columns(reason, detail).drop("problem", "_detail", "_resolved"))


def _exif_candidates(root: Path, uris: list[str], options: BuildOptions, workers: Executor, kind: str) -> SourceRows:
    scanned = scan_files(root, uris, True, options.work_dir / f"{kind}-files", workers,
                         f"reading EXIF ({kind})", options.chunk_files)
    is_gps_problem = pl.col("problem").is_in(GPS_PROBLEMS)
    reason = pl.when(is_gps_problem).then(pl.lit(NO_GPS)).otherwise(pl.col("problem")).alias("reason")
    detail = pl.when(is_gps_problem).then(pl.col("problem") + ": " + pl.col("detail")).otherwise(pl.col("detail"))
    candidates = scanned.with_columns(pl.col("uri").alias("image_id"), reason, detail.alias("detail"))
    return SourceRows(candidates.drop("problem"))


def read_wwgeotag(root: Path, options: BuildOptions, workers: Executor) -> SourceRows:
    """The extracted world-wide geotag set: every file in the numbered folders; GPS from EXIF."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not folders:
        raise CatalogError(f"{root}: no numbered photo folders (1, 2, ...) as in the world-wide geotag set")
    uris = [f"{folder.name}/{relative}" for folder in folders for relative in list_files(folder, suffixes=None)]
    return _exif_candidates(root, uris, options, workers, "wwgeotag")


def read_photos(root: Path, options: BuildOptions, workers: Executor) -> SourceRows:
    """Any folder of photos (JPEG, PNG, TIFF, HEIC by suffix, at any depth); GPS from EXIF."""
    if not root.is_dir():
        raise CatalogError(f"{root}: not a folder")
    return _exif_candidates(root, list_files(root, IMAGE_SUFFIXES), options, workers, "photos")


def read_csv_source(path: Path, options: BuildOptions, workers: Executor) -> SourceRows:
    """Any table (CSV or Parquet) with path, lat and lon columns named by options; images relative to its folder."""
    layout = {options.csv_id_column: "uri", options.csv_lat_column: "lat", options.csv_lon_column: "lon"}
    frame = select_layout(read_table(path), path, [layout]).with_columns(pl.col("uri").alias("image_id"))
    frame = _coordinates(frame)
    image_root = (options.csv_image_root or path.parent).resolve()
    scanned = scan_files(image_root, frame["uri"].unique(maintain_order=True).to_list(), False,
                         options.work_dir / "csv-files", workers, "checking images (csv)", options.chunk_files)
    joined = frame.join(scanned.select("uri", "content_hash", "problem", pl.col("detail").alias("_detail")),
                        on="uri", how="left", maintain_order="left", nulls_equal=True)
    reason, detail = _first_reason((pl.col("problem").is_not_null(), pl.col("problem"), pl.col("_detail")))
    return SourceRows(joined.with_columns(reason, detail).drop("problem", "_detail"))


READERS = {
    "mp16": read_mp16,
    "gldv2": read_gldv2,
    "wwgeotag": read_wwgeotag,
    "photos": read_photos,
    "csv": read_csv_source,
    "osv5m": read_osv5m,
}
"""Source kinds accepted by `--source KIND=PATH`."""
