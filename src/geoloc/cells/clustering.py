"""HDBSCAN geocells on the sphere, one distinct coordinate at a time.

Photo collections repeat coordinates a lot (every photo of a Google Landmarks landmark
shares one), so the photos are first collapsed into distinct coordinates with a count.
The labels must still be those of clustering one point per photo, and the libraries'
`sample_weight` does not give them: fast_hdbscan 0.3 counts a point's own weight towards
`min_samples` where its unweighted path does not, queries a fixed number of neighbours
(2 * min_samples / mean weight, which with heavy repeats is fewer than a light point
needs) and counts every point falling out of a cluster as one photo when it scores
cluster stability. On 300 scattered points plus one spot shared by 40 photos, its
weighted run calls the spot noise and finds 2 clusters where the photo-by-photo run
finds 18, the spot one of them.

What we do instead is exact and still small: each distinct coordinate is repeated
min(photos, cap) times, cap = max(min_cluster_size, min_samples + 1), and clustered
unweighted. Both fast_hdbscan and hdbscan define the core distance as the distance to
the min_samples-th nearest *other* point (they query min_samples + 1 neighbours,
the point itself first), so:

- a coordinate shared by more than min_samples photos has core distance 0 with its
  cap copies as with all of its photos, and every other point's min_samples-th
  neighbour is the same: mutual reachability distances are unchanged;
- a group of photos reaches min_cluster_size with the cap copies exactly when it does
  with all photos, so the condensed tree splits at the same places;
- the photos that were dropped are all copies with core distance 0, which leave their
  cluster at lambda = infinity: the stabilities they change are those of clusters
  holding such a coordinate (infinite in both runs) or holding a child cluster that
  does (which loses to that infinitely stable child in both runs), so excess of mass
  selects the same clusters.

Coordinates are clustered as 3-D unit vectors (Euclidean chord distance, monotonic in
great-circle distance), which has no seam at the antimeridian and no pole.
Where the library's own answer depends on the order of points tied at exactly the same
mutual reachability distance (it does: shuffling one-point-per-photo input changes a
label or two), copies of one coordinate can disagree; the coordinate then takes the
label most of its copies got, so identical coordinates always share a cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from geoloc.geo import to_unit_vectors

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
    """Distinct (lat, lon) pairs with their photo counts (np.unique on the exact float pairs)."""
    pairs = np.ascontiguousarray(np.stack([np.asarray(lat, np.float64), np.asarray(lon, np.float64)], axis=1))
    pairs += 0.0  # -0.0 and 0.0 are one coordinate
    keys = pairs.view(np.dtype((np.void, 16))).ravel()
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    return DistinctCoordinates(pairs[first, 0], pairs[first, 1], counts.astype(np.int64),
                               inverse.ravel().astype(np.int64))


def copies_needed(min_cluster_size: int, min_samples: int) -> int:
    """Copies of a repeated coordinate that give the same labels as all of its photos (see module doc)."""
    return max(min_cluster_size, min_samples + 1)


def hdbscan_distinct(
    unit_vectors: NDArray[np.float64], photos: NDArray[np.int64], min_cluster_size: int, min_samples: int
) -> NDArray[np.int64]:
    """HDBSCAN labels of distinct coordinates as if each photo were its own point (ids 0..N-1, noise -1)."""
    labels = np.full(len(photos), NOISE, dtype=np.int64)
    if len(photos) == 0 or int(photos.sum()) < max(min_cluster_size, 2):
        return labels
    import fast_hdbscan

    copies = np.minimum(photos, copies_needed(min_cluster_size, min_samples))
    owner = np.repeat(np.arange(len(photos)), copies)
    copy_labels = np.asarray(
        fast_hdbscan.fast_hdbscan(unit_vectors[owner], min_cluster_size=min_cluster_size, min_samples=min_samples)[0],
        dtype=np.int64,
    )
    starts = np.concatenate([[0], np.cumsum(copies)[:-1]])
    lowest = np.minimum.reduceat(copy_labels, starts)
    split = lowest != np.maximum.reduceat(copy_labels, starts)
    labels = lowest
    if split.any():
        in_split = split[owner]
        labels[split] = _majority_per_owner(owner[in_split], copy_labels[in_split])[1]
    return compact_labels(labels)


def _majority_per_owner(owner: NDArray[np.int64], labels: NDArray[np.int64]) -> tuple[NDArray[np.int64], ...]:
    """(owners, labels): the label most copies of each owner got; a cluster beats noise on a tie, then lower ids."""
    pairs, votes = np.unique(np.stack([owner, labels]), axis=1, return_counts=True)
    prefer_cluster = pairs[1] == NOISE
    order = np.lexsort((pairs[1], prefer_cluster, -votes, pairs[0]))
    pairs = pairs[:, order]
    first = np.r_[True, pairs[0, 1:] != pairs[0, :-1]]
    return pairs[0, first], pairs[1, first]


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
    _, nearest = tree.query(unit_vectors[noise], k=1, workers=-1)
    result = labels.copy()
    result[noise] = labels[clustered][nearest]
    return result
