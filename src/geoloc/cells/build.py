"""`geoloc cells build`: the catalog's photos into geocells and a hierarchy, written in the data
document's schemas (CSV, with Parquet twins) plus what `CellIndex` needs to assign new points."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import polars as pl
from numpy.typing import NDArray

from geoloc.errors import InputError
from geoloc.geo import coordinate_status
from geoloc.tables import TableError, read_table, write_table, write_text

from .clustering import NOISE, assign_noise_to_nearest, collapse_coordinates, hdbscan_distinct
from .hierarchy import MAX_LEVELS, centroids_and_spread, coarser_levels

CATALOG_FILE = "catalog.parquet"
CLUSTERED_COORDS = "clustered_coords"
HIERARCHICAL_COORDS = "hierarchical_clustered_coords"
CENTROIDS = "hierarchical_cluster_centroids"
STRUCTURE = "hierarchical_structure"
COORDINATES_FILE = "coordinates.parquet"
"""Distinct coordinates with their photo counts and cells: what CellIndex and the plot read."""
CELLS_JSON = "cells.json"
ASSIGN_METHOD = "level 0: the cell of the nearest clustered training coordinate; coarser levels: its ancestors"


class CellsError(InputError):
    """The catalog cannot be clustered (missing, unreadable, wrong columns, impossible coordinates)."""


@dataclass(frozen=True)
class CellsOptions:
    min_cluster_size: int = 5
    min_samples: int = 2
    levels: int = 3
    assign_noise: bool = False
    seed: int = 0

    def check(self) -> None:
        if self.min_cluster_size < 2:
            raise CellsError(f"--min-cluster-size must be at least 2, got {self.min_cluster_size}")
        if self.min_samples < 1:
            raise CellsError(f"--min-samples must be at least 1, got {self.min_samples}")
        if not 1 <= self.levels <= MAX_LEVELS:
            raise CellsError(f"--levels must be between 1 and {MAX_LEVELS}, got {self.levels}")


@dataclass
class CellsSummary:
    photos: int
    distinct_coordinates: int
    cells_per_level: list[int]
    noise_photos: int
    seconds: float
    warnings: list[str] = field(default_factory=list)


def cluster_columns(levels: int) -> list[str]:
    return [f"cluster_{level}" for level in range(levels)]


def read_catalog(catalog_dir: Path) -> pl.DataFrame:
    """path (the catalog's uri), lat, lon of every catalog photo; impossible coordinates are an error."""
    path = Path(catalog_dir) / CATALOG_FILE
    if not path.is_file():
        raise CellsError(f"{path}: no such file (run `geoloc catalog build` first)")
    try:
        frame = read_table(path, columns=["uri", "lat", "lon"])
    except TableError as error:
        raise CellsError(str(error)) from error
    frame = frame.select(pl.col("uri").cast(pl.Utf8).alias("path"), pl.col("lat").cast(pl.Float64),
                         pl.col("lon").cast(pl.Float64))
    bad = int((coordinate_status(frame["lat"].to_numpy(), frame["lon"].to_numpy()) == 1).sum())
    if bad:
        raise CellsError(f"{path}: {bad:,} row(s) have missing or impossible coordinates")
    return frame


def _input_warnings(photos: int, distinct: int, options: CellsOptions) -> list[str]:
    if photos == 0:
        return ["the catalog has no photos: every output file is written empty"]
    if photos < options.min_cluster_size:
        return [f"{photos:,} photo(s), fewer than --min-cluster-size {options.min_cluster_size}: "
                "no cell can form, every photo is noise (-1)"]
    if distinct == 1:
        return [f"all {photos:,} photos share one coordinate: HDBSCAN never returns the whole data set as "
                "one cluster, so every photo is noise (-1)"]
    return []


def build_cells(catalog_dir: Path, out: Path, options: CellsOptions | None = None,
                on_step: Callable[[str], None] | None = None) -> CellsSummary:
    """Cluster the catalog's photos, build the hierarchy and write every output file into `out`."""
    options = options or CellsOptions()
    options.check()
    step = on_step or (lambda _name: None)
    started = time.perf_counter()
    out = Path(out)

    step("reading the catalog")
    catalog = read_catalog(catalog_dir)
    step("collapsing identical coordinates")
    distinct = collapse_coordinates(catalog["lat"].to_numpy(), catalog["lon"].to_numpy())
    warnings = _input_warnings(len(catalog), len(distinct), options)
    vectors = distinct.unit_vectors
    step(f"HDBSCAN on {len(distinct):,} distinct coordinates")
    finest = hdbscan_distinct(vectors, distinct.photos, options.min_cluster_size, options.min_samples)
    if options.assign_noise:
        step("assigning noise to the nearest cell")
        finest = assign_noise_to_nearest(vectors, finest)
    step("coarser levels (spherical k-means)")
    levels = coarser_levels(vectors, distinct.photos, finest, options.levels, seed=options.seed)

    step("writing the files")
    cells = [int(level.max()) + 1 if (level != NOISE).any() else 0 for level in levels]
    write_cell_files(out, catalog, distinct.photo_to_distinct, distinct.lat, distinct.lon, distinct.photos,
                     vectors, levels)
    noise_photos = int(distinct.photos[finest == NOISE].sum())
    summary = CellsSummary(len(catalog), len(distinct), cells, noise_photos,
                           round(time.perf_counter() - started, 3), warnings)
    write_text(out / CELLS_JSON, json.dumps(_description(options, summary, levels, distinct.photos), indent=2) + "\n")
    return summary


def write_cell_files(out: Path, catalog: pl.DataFrame, photo_to_distinct: NDArray[np.int64], lat: NDArray[np.float64],
                     lon: NDArray[np.float64], photos: NDArray[np.int64], vectors: NDArray[np.float64],
                     levels: list[NDArray[np.int64]]) -> None:
    """The data-preparation guide's four tables (CSV and Parquet) and coordinates.parquet."""
    columns = cluster_columns(len(levels))
    per_photo = catalog.with_columns(
        pl.Series(name, level[photo_to_distinct], dtype=pl.Int64) for name, level in zip(columns, levels)
    )
    _write_both(per_photo.select("path", "lat", "lon", pl.col("cluster_0").alias("cluster")), out, CLUSTERED_COORDS)
    _write_both(per_photo, out, HIERARCHICAL_COORDS)
    _write_both(centroid_table(vectors, photos, levels), out, CENTROIDS)
    structure = structure_table(photos, levels)
    _write_both(structure, out, STRUCTURE)
    coordinates = pl.DataFrame({"lat": lat, "lon": lon, "photos": photos}).with_columns(
        pl.Series(name, level, dtype=pl.Int64) for name, level in zip(columns, levels)
    )
    write_table(coordinates, out / COORDINATES_FILE)


def _write_both(frame: pl.DataFrame, out: Path, stem: str) -> None:
    write_table(frame, out / f"{stem}.parquet")
    csv = frame.with_columns(
        pl.concat_str(pl.lit("["), pl.col(name).list.eval(pl.element().cast(pl.Utf8)).list.join(", "), pl.lit("]"))
        .alias(name)
        for name, dtype in frame.schema.items() if isinstance(dtype, pl.List)
    )
    write_table(csv, out / f"{stem}.csv")


def centroid_table(vectors: NDArray[np.float64], photos: NDArray[np.int64], levels: list[NDArray[np.int64]]
                   ) -> pl.DataFrame:
    """One row per cell of every level, finest first: only that level's cluster column is set (sparse)."""
    columns = cluster_columns(len(levels))
    parts = []
    for index, labels in enumerate(levels):
        lat, lon, avg_dist, _ = centroids_and_spread(vectors, photos, labels)
        ids = pl.Series(np.arange(len(lat), dtype=np.int64))
        parts.append(pl.DataFrame({
            **{name: ids if name == columns[index] else pl.Series([None] * len(lat), dtype=pl.Int64)
               for name in columns},
            "lat": lat, "lon": lon, "avg_dist": avg_dist,
        }, schema={**{name: pl.Int64 for name in columns}, "lat": pl.Float64, "lon": pl.Float64,
                   "avg_dist": pl.Float64}))
    return pl.concat(parts)


def structure_table(photos: NDArray[np.int64], levels: list[NDArray[np.int64]]) -> pl.DataFrame:
    """The tree: a root row (no cluster set, children = the coarsest cells), then one row per cell, coarsest
    level first, with its own id and its ancestors' (right-triangular), num_items = its photos, children = the
    ids of its cells one level finer ([] at level 0)."""
    columns = cluster_columns(len(levels))
    schema = {**{name: pl.Int64 for name in columns}, "num_items": pl.Int64, "children": pl.List(pl.Int64)}
    member = levels[0] != NOISE
    links = pl.DataFrame({name: level[member] for name, level in zip(columns, levels)} | {"photos": photos[member]})
    top = columns[-1]
    rows = [pl.DataFrame({**{name: [None] for name in columns}, "num_items": [int(photos[member].sum())],
                          "children": [sorted(set(links[top].to_list()))]}, schema=schema)]
    for index in range(len(levels) - 1, -1, -1):
        own = columns[index:]
        if index > 0:
            grouped = links.group_by(own).agg(pl.col("photos").sum().alias("num_items"),
                                              pl.col(columns[index - 1]).unique().sort().alias("children"))
        else:
            grouped = links.group_by(own).agg(pl.col("photos").sum().alias("num_items")).with_columns(
                pl.lit([], dtype=pl.List(pl.Int64)).alias("children"))
        rows.append(grouped.with_columns(pl.lit(None, dtype=pl.Int64).alias(name) for name in columns[:index])
                    .select(list(schema)).cast(schema).sort(columns[index]))
    return pl.concat(rows)


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in ("geoloc", "scikit-learn", "numba", "numpy", "scipy", "polars"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _description(options: CellsOptions, summary: CellsSummary, levels: list[NDArray[np.int64]],
                 photos: NDArray[np.int64]) -> dict:
    return {
        "parameters": asdict(options),
        "algorithm": {
            "clustering": "HDBSCAN on 3-D unit vectors (Boruvka MST on a KD-tree), excess of mass",
            "collapse": "identical coordinates collapsed into one point weighted by its photos; labels as one "
                        "point per photo (geoloc.cells.hdbscan_weighted)",
            "hierarchy": "size-weighted spherical k-means of the finer level's centroids, ~n^0.75, n^0.5, ... cells",
            "centroid": "spherical mean of the member photos; avg_dist = their mean great-circle distance, km",
            "assign": ASSIGN_METHOD,
        },
        "photos": summary.photos,
        "distinct_coordinates": summary.distinct_coordinates,
        "noise_photos": summary.noise_photos,
        "levels": [
            {"level": index, "column": f"cluster_{index}", "cells": cells,
             "photos_in_cells": int(photos[level != NOISE].sum())}
            for index, (cells, level) in enumerate(zip(summary.cells_per_level, levels))
        ],
        "libraries": _library_versions(),
        "seconds": summary.seconds,
        "warnings": summary.warnings,
    }

