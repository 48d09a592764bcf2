"""A picture of the cells of one level over the bundled world outline, drawn offline (no map tiles)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.bundled import bundled

from .build import COORDINATES_FILE, CellsError
from .clustering import NOISE
from .semantic_build import CELLS_GEOPARQUET, read_geoparquet

MAX_POINTS_DRAWN = 500_000
"""Beyond this many distinct coordinates, a random sample is drawn: the picture looks the same."""


def plot_cells(folder: str | Path, out: str | Path, level: int = 0, seed: int = 0) -> int:
    """Draw each cell's coordinates in the cell's colour (noise in grey) on an equirectangular world map;
    returns the number of cells drawn. The image format follows `out`'s suffix (png, svg, pdf)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    if (Path(folder) / CELLS_GEOPARQUET).is_file():
        return _plot_shapes(Path(folder), out, seed)
    path = Path(folder) / COORDINATES_FILE
    if not path.is_file():
        raise CellsError(f"{path}: no such file (is {folder} the output of `geoloc cells build`?)")
    coordinates = pl.read_parquet(path)
    column = f"cluster_{level}"
    if column not in coordinates.columns:
        levels = sum(name.startswith("cluster_") for name in coordinates.columns)
        raise CellsError(f"level {level} does not exist; {folder} has levels 0 to {levels - 1}")
    if len(coordinates) > MAX_POINTS_DRAWN:
        coordinates = coordinates.sample(MAX_POINTS_DRAWN, seed=seed)
    lat, lon = coordinates["lat"].to_numpy(), coordinates["lon"].to_numpy()
    cells = coordinates[column].to_numpy()

    figure, axes = plt.subplots(figsize=(16, 8.4), dpi=120)
    axes.add_collection(PolyCollection(_outline_rings(), facecolors="#f2efe9", edgecolors="#9a9a9a", linewidths=0.3))
    noise = cells == NOISE
    axes.scatter(lon[noise], lat[noise], s=0.3, c="#b0b0b0", linewidths=0, rasterized=True)
    n_cells = int(cells.max()) + 1 if (~noise).any() else 0
    palette = np.random.default_rng(seed).uniform(0.1, 0.9, size=(max(n_cells, 1), 3))
    axes.scatter(lon[~noise], lat[~noise], s=0.8, c=palette[cells[~noise]], linewidths=0, rasterized=True)
    _finish(figure, axes, out, f"{n_cells:,} cells at level {level} ({column}); grey: noise")
    return n_cells


def _finish(figure, axes, out: str | Path, title: str) -> None:
    import matplotlib.pyplot as plt

    axes.set_xlim(-180, 180)
    axes.set_ylim(-90, 90)
    axes.set_aspect("equal")
    axes.set_facecolor("#dfeaf3")
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)


def _plot_shapes(folder: Path, out: str | Path, seed: int) -> int:
    """Semantic cells: each cell's polygons filled in its own colour, borders drawn thin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shapely
    from matplotlib.collections import PolyCollection

    _, shapes = read_geoparquet(folder / CELLS_GEOPARQUET)
    parts, owner = shapely.get_parts(shapes, return_index=True)
    polygons = shapely.get_type_id(parts) == 3
    rings = [np.asarray(ring.coords) for ring in shapely.get_exterior_ring(parts[polygons])]
    palette = np.random.default_rng(seed).uniform(0.15, 0.95, size=(max(len(shapes), 1), 3))
    figure, axes = plt.subplots(figsize=(16, 8.4), dpi=120)
    axes.add_collection(PolyCollection(_outline_rings(), facecolors="#f2efe9", edgecolors="none"))
    axes.add_collection(PolyCollection(rings, facecolors=palette[owner[polygons]], edgecolors="#555555",
                                       linewidths=0.15, rasterized=True))
    _finish(figure, axes, out, f"{len(shapes):,} semantic cells")
    return len(shapes)


def _outline_rings() -> list[np.ndarray]:
    """The outer rings of the bundled Natural Earth countries as (lon, lat) arrays."""
    rings = []
    for feature in json.loads(bundled("world_110m.geojson"))["features"]:
        geometry = feature["geometry"]
        polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
        rings.extend(np.asarray(polygon[0], dtype=np.float64) for polygon in polygons)
    return rings
