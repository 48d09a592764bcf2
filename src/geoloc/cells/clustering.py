"""HDBSCAN geocells on the sphere, one distinct coordinate at a time.

Photos are collapsed onto their distinct coordinates with a count, clustered as 3-D
unit vectors (Euclidean chord distance, monotonic in great-circle distance: no seam at
the antimeridian, no pole), with the labels of one point per photo
(`geoloc.cells.hdbscan_weighted` says how, and why the libraries' `sample_weight` does
not give them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from geoloc.geo import to_unit_vectors
from geoloc.machine import cpu_count

NOISE = -1


@dataclass(frozen=True)
class DistinctCoordinates:
    """Photos collapsed onto their distinct coordinates."""

    lat: NDArray[np.float64]
    lon: NDArray[np.float64]
    photos: NDArray[np.int64]
    """How many photos share each coordinate."""
    photo_to_distinct: NDArray[np.int64]
    """For each photo, the index of its coordinate."""

    def __len__(self) -> int:
        return len(self.lat)

    @property
    def unit_vectors(self) -> NDArray[np.float64]:
        return to_unit_vectors(self.lat, self.lon)


def collapse_coordinates(lat: NDArray[np.float64], lon: NDArray[np.float64]) -> DistinctCoordinates:
    """Distinct (lat, lon) pairs, exactly equal floats, with their photo counts (a lexicographic sort)."""
    lat = np.asarray(lat, np.float64) + 0.0  # -0.0 and 0.0 are one coordinate
    lon = np.asarray(lon, np.float64) + 0.0
    order = np.lexsort((lon, lat))
    sorted_lat, sorted_lon = lat[order], lon[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (sorted_lat[1:] != sorted_lat[:-1]) | (sorted_lon[1:] != sorted_lon[:-1])
    group = np.cumsum(starts) - 1
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = group
    first = np.flatnonzero(starts)
    counts = np.diff(np.append(first, len(order))).astype(np.int64)
    return DistinctCoordinates(sorted_lat[first], sorted_lon[first], counts, inverse)


def hdbscan_distinct(
    unit_vectors: NDArray[np.float64], photos: NDArray[np.int64], min_cluster_size: int, min_samples: int
) -> NDArray[np.int64]:
    """HDBSCAN labels of distinct coordinates as if each photo were its own point (ids 0..N-1, noise -1)."""
    from .hdbscan_weighted import weighted_hdbscan  # numba and its kd-tree (235 MB resident): only when clustering

    return compact_labels(weighted_hdbscan(unit_vectors, photos, min_cluster_size, min_samples))


def compact_labels(labels: NDArray[np.int64]) -> NDArray[np.int64]:
    """Cluster ids renumbered 0..N-1 without gaps, in their old order; noise stays -1."""
    clustered = labels != NOISE
    result = np.full(len(labels), NOISE, dtype=np.int64)
    if clustered.any():
        _, renumbered = np.unique(labels[clustered], return_inverse=True)
        result[clustered] = renumbered.ravel()
    return result


def assign_noise_to_nearest(unit_vectors: NDArray[np.float64], labels: NDArray[np.int64]) -> NDArray[np.int64]:
    """Each noise coordinate takes the cluster of the nearest clustered coordinate (for classifier training)."""
    noise = labels == NOISE
    clustered = ~noise
    if not noise.any() or not clustered.any():
        return labels
    tree = cKDTree(unit_vectors[clustered])
    _, nearest = tree.query(unit_vectors[noise], k=1, workers=cpu_count())
    result = labels.copy()
    result[noise] = labels[clustered][nearest]
    return result
