"""Combine the sources into one catalog: common checks, dedupe, quarantine, exports."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.catalog.sources import READERS, BuildOptions, CatalogError
from geoloc.cluster import check_engine
from geoloc.geo import CoordinateStatus, coordinate_status
from geoloc.images import OUTSIDE_ROOT, ImageStore
from geoloc.resumable import Executor, Workers
from geoloc.tables import write_table, write_text

DUPLICATE = "duplicate"

QUARANTINE_REASONS = (
    "bad_coordinates", "null_island", "missing_image", "missing_metadata",
    "corrupt_image", "no_gps", "unresolved_landmark", OUTSIDE_ROOT, DUPLICATE,
)
"""Every reason a row can be refused for, as written in quarantine.parquet."""

CATALOG_FILE = "catalog.parquet"
QUARANTINE_FILE = "quarantine.parquet"
PATH_TO_COORDS_FILE = "path_to_coords.csv"
SOURCES_FILE = "sources.json"
WORK_DIR = ".work"


@dataclass(frozen=True)
class BuildSummary:
    """Rows kept per source and refused per (source, reason)."""

    kept: dict[str, int]
    refused: dict[tuple[str, str], int]

    @property
    def total_refused(self) -> int:
        return sum(self.refused.values())


def parse_source(text: str) -> tuple[str, Path]:
    """`KIND=PATH` with a known KIND."""
    kind, separator, path = text.partition("=")
    if not separator or not path or kind not in READERS:
        raise CatalogError(f"--source {text!r}: expected KIND=PATH with KIND one of {', '.join(READERS)}")
    return kind, Path(path)


def coordinate_reasons(lat: pl.Series, lon: pl.Series) -> pl.Series:
    """Per row, null for usable coordinates, else `bad_coordinates` or `null_island` (missing is bad)."""
    status = coordinate_status(lat.fill_null(np.nan).to_numpy(), lon.fill_null(np.nan).to_numpy())
    names = {int(code): code.reason for code in CoordinateStatus if code != CoordinateStatus.OK}
    return pl.Series(status).replace_strict(names, default=None, return_dtype=pl.Utf8)


def _coordinate_reasons(frame: pl.DataFrame) -> pl.DataFrame:
    found = coordinate_reasons(frame["lat"], frame["lon"]).alias("_coordinates")
    unset = pl.col("reason").is_null() & pl.col("_coordinates").is_not_null()
    return frame.with_columns(found).with_columns(
        pl.when(unset).then("_coordinates").otherwise("reason").alias("reason"),
        pl.when(unset).then(pl.lit("latitude/longitude unusable")).otherwise("detail").alias("detail"),
    ).drop("_coordinates")


def _mark_duplicates(frame: pl.DataFrame, key: str, describe: str) -> pl.DataFrame:
    """Among rows still good, every repeat of `key` after its first row becomes a duplicate.

    `describe` formats the detail from the first row's source and image_id.
    """
    good = frame.filter(pl.col("reason").is_null() & pl.col(key).is_not_null())
    first = good.unique(key, keep="first", maintain_order=True).select(
        key, pl.format(describe, "source", "image_id").alias("_first"), pl.col("_row").alias("_first_row"))
    repeats = good.join(first, on=key).filter(pl.col("_row") != pl.col("_first_row")).select("_row", "_first")
    marked = frame.join(repeats, on="_row", how="left", maintain_order="left")
    return marked.with_columns(
        pl.when(pl.col("_first").is_not_null()).then(pl.lit(DUPLICATE)).otherwise("reason").alias("reason"),
        pl.when(pl.col("_first").is_not_null()).then("_first").otherwise("detail").alias("detail"),
    ).drop("_first")


def combine(candidates: list[pl.DataFrame]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(catalog, quarantine) from the sources' candidates, in source order.

    Coordinates are checked first, then an image_id repeated (within or across
    sources) and finally the same bytes under another id are kept once: the first.
    """
    frame = pl.concat(candidates, how="diagonal_relaxed").with_row_index("_row")
    frame = _coordinate_reasons(frame)
    frame = _mark_duplicates(frame, "image_id", "image_id already kept from {}:{}")
    frame = _mark_duplicates(frame, "content_hash", "same bytes as {}:{}")
    frame = frame.drop("_row")
    catalog = frame.filter(pl.col("reason").is_null()).drop("reason", "detail")
    front = ["image_id", "uri", "lat", "lon", "source"]
    catalog = catalog.select(*front, *(c for c in catalog.columns if c not in front))
    quarantine = frame.filter(pl.col("reason").is_not_null()).select(
        "source", "image_id", "uri", "reason", "detail", "lat", "lon")
    return catalog, quarantine


def executor(options: BuildOptions) -> Executor:
    """Where the scans run: this machine's worker processes, or Ray (imported only when asked for)."""
    if check_engine(options.engine) == "ray":
        from geoloc.catalog.ray_engine import RayWorkers

        return RayWorkers(options.ray_address)
    return Workers(options.workers)


def _read_source(kind: str, path: Path, options: BuildOptions, workers: Executor, out: Path,
                 described: dict[str, dict[str, str]]) -> pl.DataFrame:
    """One source's candidates; its root (and member index, if any) recorded for open_store."""
    if not path.exists():
        raise CatalogError(f"--source {kind}={path}: no such file or folder")
    path = path.resolve()  # tasks may run on other machines, whose working folder is not ours
    rows = READERS[kind](path, options, workers)
    root = path if path.is_dir() else (options.csv_image_root or path.parent)
    described[kind] = {"root": str(root.resolve())}
    if rows.member_index is not None:
        index_path = Path("indexes") / f"{kind}.parquet"
        write_table(rows.member_index, out / index_path)
        described[kind]["index"] = index_path.as_posix()
    return rows.candidates.with_columns(pl.lit(kind).alias("source"))


def build_catalog(sources: list[tuple[str, Path]], out: Path, options: BuildOptions | None = None) -> BuildSummary:
    """Read every source, combine, and write catalog, quarantine, path_to_coords.csv and sources.json to `out`.

    Work already done (indexed shards, scanned file chunks) is cached under out/.work,
    so a re-run or a resumed run redoes nothing finished.
    """
    kinds = [kind for kind, _ in sources]
    repeated = sorted({kind for kind in kinds if kinds.count(kind) > 1})
    if repeated:
        raise CatalogError(f"--source {', '.join(repeated)} given more than once; one folder per kind")
    if not sources:
        raise CatalogError("no --source given")
    options = options or BuildOptions(work_dir=out / WORK_DIR)
    candidates, described = [], {}
    with executor(options) as workers:
        for kind, path in sources:
            candidates.append(_read_source(kind, path, options, workers, out, described))
    catalog, quarantine = combine(candidates)
    write_table(catalog, out / CATALOG_FILE)
    write_table(quarantine, out / QUARANTINE_FILE)
    write_table(catalog.select(pl.col("uri").alias("path"), "lat", "lon"), out / PATH_TO_COORDS_FILE)
    write_text(out / SOURCES_FILE, json.dumps(described, indent=2))
    kept = dict(catalog.group_by("source").len().iter_rows())
    refused = {(s, r): n for s, r, n in quarantine.group_by("source", "reason").len().iter_rows()}
    return BuildSummary({kind: kept.get(kind, 0) for kind in kinds}, refused)


def open_store(catalog_dir: Path, source: str) -> ImageStore:
    """The ImageStore that opens the catalog uris of `source` (its root, and its member index if any)."""
    described = json.loads((catalog_dir / SOURCES_FILE).read_text())
    if source not in described:
        raise CatalogError(f"{catalog_dir}: no source {source!r}; it has {', '.join(described)}")
    entry = described[source]
    if "index" in entry:
        return ImageStore.open_index(Path(entry["root"]), catalog_dir / entry["index"])
    return ImageStore(Path(entry["root"]))
