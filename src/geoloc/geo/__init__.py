"""Geometry on the Earth, vectorized over numpy arrays.

Every stage measures distances the same way through this module: great-circle on a
sphere of the mean Earth radius by default, WGS-84 geodesic (pyproj) on request.
Clustering and nearest-neighbour work use 3-D unit vectors, which have no seam at the
antimeridian and no singularity at the poles.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import IntEnum
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pyproj import Geod

from geoloc.errors import InputError
from geoloc.machine import cpu_count

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
    return _blockwise(_great_circle_block, _as_float_arrays(lat1, lon1, lat2, lon2))


_BLOCK_ROWS = 1 << 17


def _blockwise(block_distance: Callable[..., NDArray[np.float64]], arrays: list[NDArray]) -> NDArray[np.float64]:
    """`block_distance` over blocks of rows of equally shaped arrays, the blocks spread over the cores.

    Blocks keep a formula's dozen temporaries in cache (about twice as fast on millions of
    rows), and NumPy's ufuncs and pyproj release the GIL, so threads share the work.
    """
    flat = [array.ravel() for array in arrays]
    out = np.empty(flat[0].size, dtype=np.float64)

    def fill(start: int) -> None:
        out[start:start + _BLOCK_ROWS] = block_distance(*(array[start:start + _BLOCK_ROWS] for array in flat))

    starts = range(0, out.size, _BLOCK_ROWS)
    workers = min(len(starts), cpu_count())
    if workers <= 1:
        for start in starts:
            fill(start)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fill, starts))
    return out.reshape(arrays[0].shape)[()]  # a scalar in, a scalar out


def _great_circle_block(lat1: NDArray, lon1: NDArray, lat2: NDArray, lon2: NDArray) -> NDArray[np.float64]:
    lat1, lon1, lat2, lon2 = (np.radians(a) for a in (lat1, lon1, lat2, lon2))
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
    return _blockwise(_geodesic_block, _as_float_arrays(lat1, lon1, lat2, lon2))


def _geodesic_block(lat1: NDArray, lon1: NDArray, lat2: NDArray, lon2: NDArray) -> NDArray[np.float64]:
    _, _, metres = _WGS84.inv(lon1, lat1, lon2, lat2)
    return np.asarray(metres, dtype=np.float64) / 1000.0


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
    raise InputError(f"unknown distance method {method!r}; choose one of {', '.join(DISTANCE_METHODS)}")


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


def mean_directions(unit_vectors: ArrayLike, groups: ArrayLike, n_groups: int,
                    weights: ArrayLike | None = None) -> NDArray[np.float64]:
    """Per group, the (weighted) mean direction of its members' unit vectors, shape (n_groups, 3).

    The normalized sum of unit vectors: right across the antimeridian and near the poles,
    where the mean of degrees is not. A group that is empty, or whose members cancel out
    (say, two antipodes), has no mean direction: its row is NaN, for the caller to decide.
    Members with a negative group belong to none (noise).
    """
    vectors = np.asarray(unit_vectors, dtype=np.float64).reshape(-1, 3)
    groups = np.asarray(groups, dtype=np.int64).ravel()
    w = np.ones(len(vectors)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if not len(vectors) == len(groups) == len(w):
        raise ValueError(f"expected one group and one weight per vector: {len(vectors)} vectors, "
                         f"{len(groups)} groups, {len(w)} weights")
    member = groups >= 0
    sums = np.stack([np.bincount(groups[member], weights=w[member] * vectors[member, axis], minlength=n_groups)
                     for axis in range(3)], axis=1)
    scale = np.bincount(groups[member], weights=np.abs(w[member]), minlength=n_groups)
    norms = np.linalg.norm(sums, axis=1)
    defined = norms > 1e-9 * np.maximum(scale, 1e-300)
    directions = np.full((n_groups, 3), np.nan)
    directions[defined] = sums[defined] / norms[defined, None]
    return directions


def spherical_mean(
    lat: ArrayLike, lon: ArrayLike, weights: ArrayLike | None = None
) -> tuple[float, float]:
    """The (weighted) mean direction of points on the sphere, as (lat, lon) in degrees (see mean_directions).

    Raises ValueError when the points cancel out, where no mean direction exists.
    """
    vectors = to_unit_vectors(lat, lon).reshape(-1, 3)
    if len(vectors) == 0:
        raise ValueError("the spherical mean of no points is undefined")
    if weights is not None and np.size(weights) != len(vectors):
        raise ValueError(f"expected {len(vectors)} weights, got {np.size(weights)}")
    direction = mean_directions(vectors, np.zeros(len(vectors), dtype=np.int64), 1, weights)[0]
    if np.isnan(direction[0]):
        raise ValueError("the points cancel out on the sphere; their mean direction is undefined")
    mean_lat, mean_lon = from_unit_vectors(direction)
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
    bad = ~((np.abs(lat) <= 90.0) & (np.abs(lon) <= 180.0))  # NaN and infinities fail both comparisons
    status = np.full(lat.shape, CoordinateStatus.OK, dtype=np.uint8)
    status[(lat == 0.0) & (lon == 0.0)] = CoordinateStatus.NULL_ISLAND
    status[bad] = CoordinateStatus.BAD_COORDINATES
    return status


MERCATOR_MAX_LAT = 85.0511287798
"""Web Mercator's edge: maps cannot show what lies nearer a pole, so views are fitted within it."""

MIN_REGION_KM = 1.0
"""The smallest confidence region drawn: a radius of 0 (a model that puts its whole belief on one
gallery point) is still a place on the map, not nothing."""
POLE_OFFSET_DEG = 1e-6
"""How far (about 11 cm) a centre on a pole is moved towards the equator: at the pole itself every
bearing points south and the circle's longitudes are undefined."""

Ring = list[list[float]]
"""A closed ring of [lat, lon] vertices (the first is not repeated), as Leaflet takes it."""


def _destinations(lat: float, lon: float, angle: float, bearings: NDArray[np.float64]) -> NDArray[np.float64]:
    """Points (lat, lon) in degrees at central `angle` (radians) from (lat, lon) along each bearing."""
    lat0, lon0 = np.radians(lat), np.radians(lon)
    sin_lat = np.sin(lat0) * np.cos(angle) + np.cos(lat0) * np.sin(angle) * np.cos(bearings)
    lats = np.arcsin(np.clip(sin_lat, -1.0, 1.0))
    lons = lon0 + np.arctan2(np.sin(bearings) * np.sin(angle) * np.cos(lat0),
                             np.cos(angle) - np.sin(lat0) * sin_lat)
    return np.degrees(np.stack([lats, lons], axis=1))


def _clip_half_plane(ring: NDArray[np.float64], limit: float, keep_below: bool) -> NDArray[np.float64]:
    """Sutherland-Hodgman against lon <= limit (or >= limit): each edge emits its start if kept,
    then its crossing of the line; vectorized over the edges."""
    start, end = ring, np.roll(ring, -1, axis=0)
    side = (limit - ring[:, 1]) if keep_below else (ring[:, 1] - limit)
    start_in, end_in = side >= 0, np.roll(side, -1) >= 0
    crossing = start_in != end_in
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(crossing, (limit - start[:, 1]) / (end[:, 1] - start[:, 1]), 0.0)
    cut = np.stack([start[:, 0] + t * (end[:, 0] - start[:, 0]), np.full(len(ring), limit)], axis=1)
    points = np.stack([start, cut], axis=1).reshape(-1, 2)
    return points[np.stack([start_in, crossing], axis=1).reshape(-1)]


def _split_at_antimeridian(ring: NDArray[np.float64]) -> list[NDArray[np.float64]]:
    """A ring with unwrapped longitudes, cut into the pieces that fall in [-180, 180] once shifted
    by whole turns; every piece's edges then stay within one copy of the world."""
    pieces = []
    first_turn = int(np.floor((ring[:, 1].min() + 180.0) / 360.0))
    last_turn = int(np.ceil((ring[:, 1].max() - 180.0) / 360.0))
    for turn in range(first_turn, last_turn + 1):
        shifted = ring - [0.0, 360.0 * turn]
        piece = _clip_half_plane(_clip_half_plane(shifted, 180.0, keep_below=True), -180.0, keep_below=False)
        if len(piece) >= 3 and np.ptp(piece[:, 1]) > 0 and np.ptp(piece[:, 0]) > 0:
            pieces.append(piece)
    return pieces


def _along_latitude(lat: float, lon_from: float, lon_to: float) -> NDArray[np.float64]:
    """A latitude line as vertices every <= 45 degrees of longitude, so no edge spans half the world."""
    steps = max(2, int(np.ceil(abs(lon_to - lon_from) / 45.0)) + 1)
    return np.stack([np.full(steps, lat), np.linspace(lon_from, lon_to, steps)], axis=1)


def confidence_region(lat: float, lon: float, radius_km: float, vertices: int = 128) -> list[list[Ring]]:
    """The points within `radius_km` of (lat, lon) on the sphere, as polygons for a lat/lon map.

    A Leaflet circle is a circle on the Mercator plane, wrong for large radii; this is the true
    small circle (`vertices` points at great-circle distance `radius_km`), cut at the antimeridian,
    closed along the pole's latitude when the region holds a pole, and drawn as the world with a
    hole when it holds both (a region larger than a hemisphere). Returns a list of polygons, each
    a list of rings (outer ring first, then holes), in [lat, lon] order like Leaflet's multi-polygons.

    Defined for every centre and radius: radii below MIN_REGION_KM (0 and NaN included) are drawn
    as MIN_REGION_KM, a centre on a pole as one POLE_OFFSET_DEG from it.
    """
    angle = (radius_km if radius_km > MIN_REGION_KM else MIN_REGION_KM) / EARTH_RADIUS_KM
    lat = float(np.clip(lat, POLE_OFFSET_DEG - 90.0, 90.0 - POLE_OFFSET_DEG))
    world = np.concatenate([_along_latitude(-90.0, -180.0, 180.0), _along_latitude(90.0, 180.0, -180.0)])
    if angle >= np.pi:
        return [[world.tolist()]]
    bearings = np.linspace(0.0, 2.0 * np.pi, vertices + 1)
    ring = _destinations(lat, lon, angle, bearings)
    ring[:, 1] = np.degrees(np.unwrap(np.radians(ring[:, 1])))
    turns = round((ring[-1, 1] - ring[0, 1]) / 360.0)
    if turns:
        pole = 90.0 if lat >= 0 else -90.0
        capped = np.concatenate([ring, _along_latitude(pole, ring[-1, 1], ring[0, 1])])
        return [[piece.tolist()] for piece in _split_at_antimeridian(capped)]
    boundary = _split_at_antimeridian(ring[:-1])
    if np.degrees(angle) > 90.0 - abs(lat):
        return [[world.tolist(), *(piece.tolist() for piece in boundary)]]
    return [[piece.tolist()] for piece in boundary]


def region_bounds(region: list[list[Ring]]) -> list[list[float]]:
    """[[south, west], [north, east]] of a region, within Mercator's edge: the view to fit."""
    points = np.array([vertex for polygon in region for vertex in polygon[0]])
    south, west = points.min(axis=0)
    north, east = points.max(axis=0)
    edge = MERCATOR_MAX_LAT
    return [[float(np.clip(south, -edge, edge)), float(west)], [float(np.clip(north, -edge, edge)), float(east)]]


def drawable_region(lat: float, lon: float, radius_km: float) -> dict:
    """What a map page needs to draw a confidence radius: `region` (polygons) and `region_bounds`."""
    region = confidence_region(lat, lon, radius_km)
    return {"region": region, "region_bounds": region_bounds(region)}
