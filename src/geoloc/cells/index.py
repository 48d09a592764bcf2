"""Assigning new coordinates to the cells of a `geoloc cells build` folder, from Parquet and JSON only.

Level 0 takes the cell of the nearest clustered training coordinate (the 1-nearest-neighbour
reading of HDBSCAN membership), so every training photo that is in a cell maps back to
that cell, which the nearest centroid would not promise for a photo near a border. The
coarser levels take that cell's ancestors, so the answer is always one consistent path
through the hierarchy. With `max_distance_km`, a point farther than that from every
clustered coordinate is noise (-1) at every level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from geoloc.geo import chord_to_km, coordinate_status, to_unit_vectors
from geoloc.machine import cpu_count

from .build import CELLS_JSON, COORDINATES_FILE, CellsError, cluster_columns
from .clustering import NOISE
from .semantic_build import SEMANTIC, ShapeCellIndex


@dataclass
class CellIndex:
    """Clustered training coordinates with their cell at every level, searchable on the sphere."""

    unit_vectors: NDArray[np.float64]
    cells: NDArray[np.int64]
    """Shape (coordinates, levels): the cell of each clustered training coordinate at every level."""
    description: dict

    def __post_init__(self) -> None:
        self._tree = cKDTree(self.unit_vectors) if len(self.unit_vectors) else None

    @property
    def levels(self) -> int:
        return self.cells.shape[1]

    @classmethod
    def load(cls, folder: str | Path) -> CellIndex | ShapeCellIndex:
        """Read coordinates.parquet and cells.json of a `geoloc cells build` output folder (semantic cells:
        their polygons, `ShapeCellIndex`)."""
        folder = Path(folder)
        description_path, coordinates_path = folder / CELLS_JSON, folder / COORDINATES_FILE
        for path in (description_path, coordinates_path):
            if not path.is_file():
                raise CellsError(f"{path}: no such file (is {folder} the output of `geoloc cells build`?)")
        description = json.loads(description_path.read_text(encoding="utf-8"))
        if description.get("method") == SEMANTIC:
            return ShapeCellIndex.load(folder, description)
        columns = cluster_columns(len(description["levels"]))
        coordinates = pl.read_parquet(coordinates_path).filter(pl.col("cluster_0") != NOISE)
        vectors = to_unit_vectors(coordinates["lat"].to_numpy(), coordinates["lon"].to_numpy()).reshape(-1, 3)
        cells = coordinates.select(columns).to_numpy().astype(np.int64).reshape(-1, len(columns))
        return cls(vectors, cells, description)

    def assign(self, lat: ArrayLike, lon: ArrayLike, max_distance_km: float | None = None) -> NDArray[np.int64]:
        """Cell ids, shape (points, levels), column l the level-l cell; -1 where there is none (no cells at all,
        impossible coordinates, or farther than max_distance_km from every clustered coordinate)."""
        lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
        lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
        result = np.full((len(lat), self.levels), NOISE, dtype=np.int64)
        usable = coordinate_status(lat, lon) != 1
        if self._tree is None or not usable.any():
            return result
        chord, nearest = self._tree.query(to_unit_vectors(lat[usable], lon[usable]), k=1, workers=cpu_count())
        found = np.ones(len(nearest), dtype=bool)
        if max_distance_km is not None:
            found = chord_to_km(chord) <= max_distance_km
        rows = np.flatnonzero(usable)[found]
        result[rows] = self.cells[nearest[found]]
        return result
