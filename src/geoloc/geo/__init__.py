"""Geometry on the Earth, vectorized over numpy arrays.

Every stage measures distances the same way through this module: great-circle on a
sphere of the mean Earth radius by default, WGS-84 geodesic (pyproj) on request.
Clustering and nearest-neighbour work use 3-D unit vectors, which have no seam at the
antimeridian and no singularity at the poles.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pyproj import Geod

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), the radius of every great-circle distance here."""

ACCURACY_THRESHOLDS_KM: tuple[int, ...] = (1, 25, 200, 750, 2500)
"""Street, city, region, country and continent: the benchmarks' standard radii."""

DistanceMethod = Literal["great-circle", "geodesic"]
DISTANCE_METHODS: tuple[str, ...] = ("great-circle", "geodesic")

_WGS84 = Geod(ellps="WGS84")


def _as_float_arrays(*values: ArrayLike) -> list[NDArray[np.float64]]:
    arrays = [np.asarray(v, dtype=np.float64) for v in values]
    return list(np.broadcast_arrays(*arrays))


def great_circle_km(
    lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike
) -> NDArray[np.float64]:
    """Great-circle distance in km on a sphere of radius EARTH_RADIUS_KM.

    The central angle comes from atan2(|a x b|, a . b) (the Vincenty form for the
    sphere): unlike acos it keeps its digits for nearly identical points, and unlike
    the haversine formula it keeps them for nearly antipodal ones.
    """
    lat1, lon1, lat2, lon2 = (np.radians(a) for a in _as_float_arrays(lat1, lon1, lat2, lon2))
    sin_lat1, cos_lat1 = np.sin(lat1), np.cos(lat1)
    sin_lat2, cos_lat2 = np.sin(lat2), np.cos(lat2)
    dlon = lon2 - lon1
    sin_dlon, cos_dlon = np.sin(dlon), np.cos(dlon)
    cross = np.hypot(cos_lat2 * sin_dlon, cos_lat1 * sin_lat2 - sin_lat1 * cos_lat2 * cos_dlon)
    dot = sin_lat1 * sin_lat2 + cos_lat1 * cos_lat2 * cos_dlon
    return EARTH_RADIUS_KM * np.arctan2(cross, dot)


def geodesic_km(
    lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike
) -> NDArray[np.float64]:
    """Shortest distance in km on the WGS-84 ellipsoid (Karney's algorithm via pyproj)."""
    lat1, lon1, lat2, lon2 = _as_float_arrays(lat1, lon1, lat2, lon2)
    shape = lat1.shape
    _, _, metres = _WGS84.inv(lon1.ravel(), lat1.ravel(), lon2.ravel(), lat2.ravel())
    return (np.asarray(metres, dtype=np.float64) / 1000.0).reshape(shape)


def distance_km(
    lat1: ArrayLike,
    lon1: ArrayLike,
    lat2: ArrayLike,
    lon2: ArrayLike,
    method: DistanceMethod = "great-circle",
) -> NDArray[np.float64]:
    """Distance in km by the named method; NaN wherever an input is NaN."""
    if method == "great-circle":
        return great_circle_km(lat1, lon1, lat2, lon2)
    if method == "geodesic":
        return geodesic_km(lat1, lon1, lat2, lon2)
    raise ValueError(f"unknown distance method {method!r}; choose one of {', '.join(DISTANCE_METHODS)}")


def to_unit_vectors(lat: ArrayLike, lon: ArrayLike) -> NDArray[np.float64]:
    """Points on the unit sphere, shape (..., 3), x towards (0, 0), z towards the North Pole."""
    lat, lon = (np.radians(a) for a in _as_float_arrays(lat, lon))
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def chord_to_km(chord: ArrayLike) -> NDArray[np.float64]:
    """Great-circle km from the straight-line distance between unit vectors (what KD-trees over them return)."""
    return 2.0 * np.arcsin(np.clip(np.asarray(chord, dtype=np.float64) / 2.0, 0.0, 1.0)) * EARTH_RADIUS_KM


def from_unit_vectors(xyz: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Latitude and longitude in degrees of vectors of shape (..., 3); they need not be unit length."""
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.shape[-1] != 3:
        raise ValueError(f"expected vectors with 3 components in the last axis, got shape {xyz.shape}")
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    lat = np.degrees(np.arctan2(z, np.hypot(x, y)))
    lon = normalize_longitude(np.degrees(np.arctan2(y, x)))
    return lat, lon


def normalize_longitude(lon: ArrayLike) -> NDArray[np.float64]:
    """Longitudes wrapped into [-180, 180); 180 becomes -180, the same meridian."""
    lon = np.asarray(lon, dtype=np.float64)
    return (lon + 180.0) % 360.0 - 180.0


def spherical_mean(
    lat: ArrayLike, lon: ArrayLike, weights: ArrayLike | None = None
) -> tuple[float, float]:
    """The (weighted) mean direction of points on the sphere, as (lat, lon) in degrees.

    The arithmetic mean of degrees is wrong across the antimeridian and near the poles;
    the normalized sum of unit vectors is not. Raises ValueError when the points cancel
    out (say, two antipodes), where no mean direction exists.
    """
    vectors = to_unit_vectors(lat, lon).reshape(-1, 3)
    if len(vectors) == 0:
        raise ValueError("the spherical mean of no points is undefined")
    w = np.ones(len(vectors)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != (len(vectors),):
        raise ValueError(f"expected {len(vectors)} weights, got {w.shape[0]}")
    total = (vectors * w[:, None]).sum(axis=0)
    if np.linalg.norm(total) <= 1e-9 * max(float(np.abs(w).sum()), 1e-300):
        raise ValueError("the points cancel out on the sphere; their mean direction is undefined")
    mean_lat, mean_lon = from_unit_vectors(total)
    return float(mean_lat), float(mean_lon)


class CoordinateStatus(IntEnum):
    """Why a coordinate pair is or is not usable; values are compact codes for big arrays."""

    OK = 0
    BAD_COORDINATES = 1
    NULL_ISLAND = 2

    @property
    def reason(self) -> str:
        """The name used in quarantine files and reports."""
        return self.name.lower()


def coordinate_status(lat: ArrayLike, lon: ArrayLike) -> NDArray[np.uint8]:
    """Classify each pair: CoordinateStatus codes as a uint8 array.

    bad_coordinates: NaN, infinite, |lat| > 90 or |lon| > 180. null_island: exactly
    (0, 0), the value that broken exporters write for "unknown".
    """
    lat, lon = _as_float_arrays(lat, lon)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90.0) & (np.abs(lon) <= 180.0))
    status = np.full(lat.shape, CoordinateStatus.OK, dtype=np.uint8)
    status[(lat == 0.0) & (lon == 0.0)] = CoordinateStatus.NULL_ISLAND
    status[bad] = CoordinateStatus.BAD_COORDINATES
    return status
