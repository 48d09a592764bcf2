"""Semantic geocells (PIGEON's rules) on a small hand-made world, and on real boundaries for three countries."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import shapely
from typer.testing import CliRunner

from geoloc.cells import CellIndex
from geoloc.cells.semantic import (
    PRESETS,
    Preset,
    area_neighbours,
    attach_empty_areas,
    photo_areas,
    semantic_cells,
    split_cell,
)
from geoloc.cells.semantic_build import CELLS_GEOPARQUET, SemanticOptions, build_semantic_cells, read_geoparquet
from geoloc.cli import app
from geoloc.places.boundaries import AdminAreas, admin_areas, boundaries_folder

SMALL = Preset(min_photos=4, max_photos=10, optics=((3, 0.05),))


def world(*areas: tuple[str, str, str, shapely.Geometry]) -> AdminAreas:
    names = pl.DataFrame([a[:3] for a in areas], schema=["country", "admin1", "name"], orient="row")
    return AdminAreas(names, np.asarray([a[3] for a in areas], dtype=object))


def square(x: float, y: float, size: float = 1.0) -> shapely.Polygon:
    return shapely.box(x, y, x + size, y + size)


def test_a_photo_takes_its_area_or_that_of_the_nearest_photo_with_one():
    areas = world(("A", "A1", "a", square(0, 0)), ("A", "A1", "b", square(1, 0)))
    lat, lon = np.array([0.5, 0.5, 0.5]), np.array([0.5, 1.5, 2.3])  # the last one at sea, nearest b's photo
    assert photo_areas(areas, lat, lon).tolist() == [0, 1, 1]


def test_an_empty_area_joins_the_nearest_cell_of_its_own_country():
    areas = world(("A", "A1", "a", square(0, 0)), ("A", "A1", "far", square(0, 9)),
                  ("B", "B1", "b", square(1, 8)), ("C", "C1", "c", square(20, 20)))
    cell_of_area = np.array([0, -1, 1, -1])  # "far" lies next to B's cell, but joins A's
    assert attach_empty_areas(areas, cell_of_area).tolist() == [0, 0, 1, -1]  # C has no photo: no cell


def test_areas_touching_across_the_antimeridian_are_neighbours_but_not_across_a_border():
    areas = world(("F", "F1", "east", shapely.box(179, 0, 180, 1)), ("F", "F1", "west", shapely.box(-180, 0, -179, 1)),
                  ("F", "F1", "inland", shapely.box(178, 0, 179, 1)), ("G", "G1", "next", shapely.box(177, 0, 178, 1)))
    assert area_neighbours(areas).tolist() == [[0, 1], [0, 2]]


def test_a_small_cell_merges_across_the_antimeridian():
    areas = world(("F", "F1", "east", shapely.box(179, -17, 180, -16)),
                  ("F", "F1", "west", shapely.box(-180, -17, -179, -16)))
    cells, _, _ = cells_of(areas, {0: 9, 1: 2})
    assert np.bincount(cells.labels).tolist() == [11] and cells.names["admin2"].to_list() == ["east"]
    assert shapely.bounds(cells.shapes[0]).tolist() == [-180, -17, 180, -16]


def points_in(box: shapely.Polygon, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    minx, miny, maxx, maxy = box.bounds
    return rng.uniform(miny + 0.01, maxy - 0.01, count), rng.uniform(minx + 0.01, maxx - 0.01, count)


def cells_of(areas: AdminAreas, counts: dict[int, int], preset: Preset = SMALL, seed: int = 0):
    rng = np.random.default_rng(seed)
    parts = [points_in(areas.geometry[area], n, rng) for area, n in counts.items()]
    lat, lon = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return semantic_cells(areas, lat, lon, np.ones(len(lat), dtype=np.int64), preset, seed), lat, lon


def test_a_small_cell_merges_into_the_largest_touching_cell_of_its_admin1_area_first():
    areas = world(("A", "A1", "small", square(0, 0)), ("A", "A1", "same-admin1", square(1, 0)),
                  ("A", "A2", "bigger-elsewhere", square(0, 1)), ("B", "B1", "foreign", square(-1, 0)))
    cells, _, _ = cells_of(areas, {0: 2, 1: 5, 2: 9, 3: 9})
    groups = {tuple(sorted(cells.names["admin2"].to_list()))}
    assert groups == {("bigger-elsewhere", "foreign", "same-admin1")}
    sizes = np.bincount(cells.labels)
    assert sorted(sizes.tolist()) == [7, 9, 9]  # small (2) + same-admin1 (5)


def test_without_a_touching_cell_of_its_admin1_the_largest_touching_cell_of_the_country_wins():
    areas = world(("A", "A1", "small", square(0, 0)), ("A", "A2", "mid", square(1, 0)),
                  ("A", "A3", "large", square(0, 1)), ("A", "A1", "island", square(10, 10)),
                  ("B", "B1", "foreign", square(-1, 0)))
    cells, _, _ = cells_of(areas, {0: 1, 1: 6, 2: 8, 3: 2, 4: 30}, Preset(4, 100, SMALL.optics))
    sizes = dict(zip(cells.names["admin2"].to_list(), np.bincount(cells.labels).tolist()))
    assert sizes == {"mid": 6, "large": 9, "island": 2, "foreign": 30}
    assert cells.small == 1  # the island touches nothing of its country: it stays below the minimum


def test_a_large_cell_with_two_dense_spots_is_split_into_cells_that_partition_it():
    rng = np.random.default_rng(1)
    shape = square(0, 0, 4)
    west = np.column_stack([rng.normal(0.8, 0.05, 12), rng.normal(2, 0.05, 12)])
    east = np.column_stack([rng.normal(3.2, 0.05, 12), rng.normal(2, 0.05, 12)])
    points = np.concatenate([west, east])
    parts = split_cell(points, np.ones(len(points), dtype=np.int64), shape, SMALL, 3, 0.05)
    assert parts is not None and len(parts) == 2
    members = sorted(sorted(rows.tolist()) for rows, _ in parts)
    assert members == [list(range(12)), list(range(12, 24))]
    shapes = [part for _, part in parts]
    assert shapely.union_all(shapes).area == pytest.approx(shape.area)
    assert shapely.intersection(*shapes).area == pytest.approx(0, abs=1e-9)
    for rows, part in parts:
        assert shapely.contains_xy(part, points[rows, 0], points[rows, 1]).all()


def test_a_cell_that_is_one_dense_spot_is_not_split():
    points = np.zeros((30, 2)) + [1.0, 1.0]
    assert split_cell(points, np.ones(30, dtype=np.int64), square(0, 0, 2), SMALL, 3, 0.05) is None


def write_catalog(folder: Path, lat: np.ndarray, lon: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"image_id": [f"p{i}" for i in range(len(lat))], "uri": [f"p{i}.jpg" for i in range(len(lat))],
                  "lat": lat, "lon": lon, "source": "csv"}).write_parquet(folder / "catalog.parquet")
    return folder


def test_build_writes_geoparquet_cells_that_assign_and_train_like_hdbscan_ones(tmp_path, monkeypatch):
    areas = world(("A", "A1", "west", square(0, 0, 2)), ("A", "A1", "east", square(2, 0, 2)),
                  ("B", "B1", "south", square(0, -2, 4)))
    rng = np.random.default_rng(3)
    south_lat, south_lon = points_in(areas.geometry[2], 6, rng)
    lat = np.concatenate([rng.normal(1, 0.05, 12), rng.normal(1, 0.05, 12), south_lat])
    lon = np.concatenate([rng.normal(0.7, 0.05, 12), rng.normal(1.3, 0.05, 12), south_lon])
    catalog = write_catalog(tmp_path / "catalog", lat, lon)
    monkeypatch.setattr("geoloc.cells.semantic_build.admin_areas", lambda: areas)
    result = CliRunner().invoke(app, ["cells", "build", "--catalog", str(catalog), "--out", str(tmp_path / "cells"),
                                      "--method", "semantic", "--min-photos", "4", "--max-photos", "10"])
    assert result.exit_code == 0, result.output
    table, shapes = read_geoparquet(tmp_path / "cells" / CELLS_GEOPARQUET)
    geo = json.loads(pq.read_schema(tmp_path / "cells" / CELLS_GEOPARQUET).metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert table["country"].to_list().count("B") == 1 and table["photos"].sum() == len(lat)
    assert shapely.union_all(shapes).area == pytest.approx(16.0)
    index = CellIndex.load(tmp_path / "cells")
    labels = pl.read_parquet(tmp_path / "cells" / "clustered_coords.parquet")["cluster"].to_numpy()
    assert (index.assign(lat, lon)[:, 0] == labels).all()  # every photo's polygon is its cell's
    assert index.assign([-1.0, 50.0], [3.0, 1.0])[:, 0].tolist()[0] == table["country"].to_list().index("B")
    assert (index.assign([50.0], [1.0]) >= 0).all()  # far away: the nearest cell
    hierarchy = pl.read_parquet(tmp_path / "cells" / "hierarchical_clustered_coords.parquet")
    assert hierarchy.columns == ["path", "lat", "lon", "cluster_0"]
    drawn = CliRunner().invoke(app, ["cells", "plot", str(tmp_path / "cells"), "--out", str(tmp_path / "cells.png")])
    assert drawn.exit_code == 0 and f"{len(shapes)} cells" in drawn.output
    assert (tmp_path / "cells.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_build_refuses_impossible_presets(tmp_path):
    catalog = write_catalog(tmp_path / "catalog", np.array([1.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="--preset 'geo'"):
        build_semantic_cells(catalog, tmp_path / "out", SemanticOptions(preset="geo"))
    with pytest.raises(ValueError, match="minimum < maximum"):
        build_semantic_cells(catalog, tmp_path / "out", SemanticOptions(min_photos=50, max_photos=40))
    assert PRESETS["pigeon"].min_photos == 30 and PRESETS["pigeotto"].max_photos == 2000


needs_boundaries = pytest.mark.skipif(not (boundaries_folder() / "geoboundaries" / "data.db").is_file(),
                                      reason="boundary data not unpacked (scripts/setup.sh)")


@needs_boundaries
def test_real_boundaries_cells_never_cross_a_border_and_hold_every_photo():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from cells import geoclip_locations

    everything = admin_areas()
    countries = everything.names["country"].to_numpy()
    chosen = np.flatnonzero(np.isin(countries, ["Belgium", "Luxembourg", "Netherlands"]))
    areas = everything.subset(chosen)
    lat, lon = geoclip_locations()
    inside = areas.locate(lat, lon) >= 0
    lat, lon = lat[inside], lon[inside]
    preset = Preset(min_photos=30, max_photos=60, optics=PRESETS["pigeon"].optics)
    cells = semantic_cells(areas, lat, lon, np.ones(len(lat), dtype=np.int64), preset)
    photo_country = areas.names["country"].to_numpy()[areas.locate(lat, lon)]
    cell_country = cells.names["country"].to_numpy()[cells.labels]
    assert (cells.labels >= 0).all() and (photo_country == cell_country).all()
    sizes = np.bincount(cells.labels)
    small = sizes < preset.min_photos
    assert small.sum() == cells.small <= 1  # Luxembourg alone may hold too few photos
    points = np.column_stack([lon, lat])
    for cell in np.flatnonzero(sizes > preset.max_photos):  # the page's promise: no OPTICS pass splits these
        rows = np.flatnonzero(cells.labels == cell)
        for min_samples, xi in preset.optics:
            assert split_cell(points[rows], np.ones(len(rows), dtype=np.int64), cells.shapes[cell], preset,
                              min_samples, xi) is None


def test_optics_on_a_sample_labels_every_coordinate_like_its_nearest_sampled_photo():
    from scipy.spatial import cKDTree
    from sklearn.cluster import OPTICS

    from geoloc.cells.semantic import optics_labels, photo_sample

    rng = np.random.default_rng(2)
    points = np.concatenate([rng.normal([0, 0], 0.05, (300, 2)), rng.normal([5, 5], 0.05, (300, 2))])
    photos = rng.integers(1, 5, 600)
    sample, min_samples = photo_sample(photos, 40, 500)
    assert len(sample) == 500 and min_samples == round(40 * 500 / photos.sum())
    expected = OPTICS(min_samples=min_samples, xi=0.05).fit_predict(points[sample])
    nearest = cKDTree(points[sample]).query(points, k=1)[1]
    assert (optics_labels(points, photos, 40, 0.05, max_photos=500) == expected[nearest]).all()
    assert photo_sample(photos, 40, photos.sum())[1] == 40  # small cells: every photo, min_samples as given
