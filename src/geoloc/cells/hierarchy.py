"""Coarser levels of cells, and each cell's centroid and spread.

The data-preparation guide's scheme: with n cells at the finest level, the coarser levels have
about n^0.75, n^0.5, ... cells, each made by a size-weighted k-means of the finer
level's centroids. Here the k-means runs on the sphere (unit vectors, centres
renormalized after each update, nearest centre by chord distance through a KD-tree),
so a level never splits a cell at the antimeridian nor lumps cells across a pole.
A finer cell goes whole into one coarser cell, so every cell has exactly one parent.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from geoloc.errors import InputError
from geoloc.geo import EARTH_RADIUS_KM, from_unit_vectors, mean_directions
from geoloc.machine import cpu_count

from .clustering import NOISE, compact_labels

LEVEL_EXPONENT_STEP = 0.25
"""Level l has about n^(1 - 0.25 l) cells: n^0.75, n^0.5, n^0.25, 1."""

MAX_LEVELS = 5


def cells_per_level(finest_cells: int, levels: int) -> list[int]:
    """Target cell counts from the finest level down to the coarsest, never growing."""
    if not 1 <= levels <= MAX_LEVELS:
        raise InputError(f"levels must be between 1 and {MAX_LEVELS}, got {levels}")
    counts = [finest_cells]
    for level in range(1, levels):
        target = max(1, int(finest_cells ** (1.0 - LEVEL_EXPONENT_STEP * level))) if finest_cells else 0
        counts.append(min(target, counts[-1]))
    return counts


def cell_directions(unit_vectors: NDArray[np.float64], weights: NDArray[np.float64], labels: NDArray[np.int64],
                    n_cells: int) -> NDArray[np.float64]:
    """Per cell, the weighted mean direction of its members (noise ignored), as unit vectors.

    A cell whose members cancel out has no mean direction (`geo.mean_directions`); only a
    cell spanning the globe can, such as a single coarsest cell over antipodal photos. It
    takes its heaviest member's direction (the first on ties), so every centroid is a real
    place and the cell files hold no NaN.
    """
    directions = mean_directions(unit_vectors, labels, n_cells, weights)
    for cell in np.flatnonzero(np.isnan(directions[:, 0])):
        members = np.flatnonzero(labels == cell)
        if len(members):
            directions[cell] = unit_vectors[members[np.argmax(weights[members])]]
    return directions


def spherical_kmeans(vectors: NDArray[np.float64], weights: NDArray[np.float64], k: int, seed: int = 0,
                     max_iterations: int = 50) -> NDArray[np.int64]:
    """Weighted k-means on the unit sphere; labels 0..k'-1 (k' <= k when a centre loses every member)."""
    n = len(vectors)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    centres = vectors[rng.choice(n, size=k, replace=False)]
    labels = np.full(n, -1, dtype=np.int64)
    for _ in range(max_iterations):
        nearest = cKDTree(centres).query(vectors, k=1, workers=cpu_count())[1].astype(np.int64)
        if np.array_equal(nearest, labels):
            break
        labels = nearest
        centres = mean_directions(vectors, labels, len(centres), weights)
        centres = centres[~np.isnan(centres[:, 0])]
    else:
        labels = cKDTree(centres).query(vectors, k=1, workers=cpu_count())[1].astype(np.int64)
    return compact_labels(labels)


def coarser_levels(unit_vectors: NDArray[np.float64], photos: NDArray[np.int64], finest: NDArray[np.int64],
                   levels: int, seed: int = 0) -> list[NDArray[np.int64]]:
    """Labels of the distinct coordinates at every level, finest first; noise stays noise at every level."""
    n_finest = int(finest.max()) + 1 if (finest != NOISE).any() else 0
    targets = cells_per_level(n_finest, levels)
    result = [finest]
    weights = photos.astype(np.float64)
    current = finest
    for target in targets[1:]:
        n_current = int(current.max()) + 1 if n_finest else 0
        if n_current == 0:
            result.append(current.copy())
            continue
        sizes = np.bincount(current[current != NOISE], weights=weights[current != NOISE], minlength=n_current)
        parent_of_cell = spherical_kmeans(cell_directions(unit_vectors, weights, current, n_current), sizes, target,
                                          seed=seed)
        current = np.where(current == NOISE, NOISE, parent_of_cell[np.maximum(current, 0)])
        result.append(current)
    return result


def centroids_and_spread(unit_vectors: NDArray[np.float64], photos: NDArray[np.int64], labels: NDArray[np.int64]
                         ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]:
    """Per cell: centroid lat, lon (spherical mean of its photos), avg_dist km (their mean great-circle
    distance to it) and photo count."""
    n_cells = int(labels.max()) + 1 if (labels != NOISE).any() else 0
    weights = photos.astype(np.float64)
    centres = cell_directions(unit_vectors, weights, labels, n_cells)
    member = labels != NOISE
    member_centres = centres[labels[member]]
    cross = np.linalg.norm(np.cross(unit_vectors[member], member_centres), axis=1)
    dot = np.einsum("ij,ij->i", unit_vectors[member], member_centres)
    distance_km = EARTH_RADIUS_KM * np.arctan2(cross, dot)
    counts = np.bincount(labels[member], weights=weights[member], minlength=n_cells)
    total_km = np.bincount(labels[member], weights=weights[member] * distance_km, minlength=n_cells)
    lat, lon = from_unit_vectors(centres)
    return lat, lon, total_km / np.maximum(counts, 1), counts.astype(np.int64)
