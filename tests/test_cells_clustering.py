"""Geocell clustering: labels as one point per photo after collapsing repeats, on the sphere."""

import fast_hdbscan
import numpy as np
import pytest

from geoloc.cells.clustering import (
    NOISE,
    assign_noise_to_nearest,
    collapse_coordinates,
    compact_labels,
    hdbscan_distinct,
)
from geoloc.cells.hierarchy import cells_per_level, coarser_levels, spherical_kmeans
from geoloc.geo import EARTH_RADIUS_KM, from_unit_vectors, to_unit_vectors


def town(rng: np.random.Generator, lat: float, lon: float, photos: int, radius_km: float = 1.0
         ) -> tuple[np.ndarray, np.ndarray]:
    """Photos scattered within about radius_km of a place, drawn on the sphere (fine at poles and antimeridian)."""
    centre = to_unit_vectors(lat, lon)
    offsets = rng.normal(size=(photos, 3)) * (radius_km / EARTH_RADIUS_KM)
    offsets -= (offsets @ centre)[:, None] * centre
    return from_unit_vectors(centre + offsets)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renaming the clusters, noise being noise in both."""
    if not np.array_equal(a == NOISE, b == NOISE):
        return False
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def photo_labels(lat: np.ndarray, lon: np.ndarray, min_cluster_size: int = 5, min_samples: int = 2) -> np.ndarray:
    distinct = collapse_coordinates(lat, lon)
    labels = hdbscan_distinct(distinct.unit_vectors, distinct.photos, min_cluster_size, min_samples)
    return labels[distinct.photo_to_distinct]


def heavy_repeats(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Towns of scattered photos, a third of their coordinates shared by 2-12 photos, and one 40-photo spot on
    its own; the spot's first photo index is returned too."""
    rng = np.random.default_rng(seed)
    parts = [town(rng, lat, lon, n, radius_km=3.0) for lat, lon, n in
             [(48.85, 2.35, 60), (45.76, 4.84, 35), (43.30, 5.37, 25), (50.85, 4.35, 12)]]
    parts.append(town(rng, 47.0, 1.0, 40, radius_km=150.0))  # sparse countryside, mostly noise
    lat = np.concatenate([p[0] for p in parts])
    lon = np.concatenate([p[1] for p in parts])
    repeats = np.where(rng.random(len(lat)) < 0.33, rng.integers(2, 13, size=len(lat)), 1)
    lat, lon = np.repeat(lat, repeats), np.repeat(lon, repeats)
    spot_lat, spot_lon = np.full(40, 41.9022), np.full(40, 12.4539)  # 40 photos of one landmark, one geotag
    return np.concatenate([lat, spot_lat]), np.concatenate([lon, spot_lon]), len(lat)


def relabelled_photos(a: np.ndarray, b: np.ndarray) -> int:
    """Photos whose label in `a` is not the one most of their `a`-cluster has in `b`."""
    pairs, counts = np.unique(np.stack([a, b]), axis=1, return_counts=True)
    most = {}
    for (label, _), count in zip(pairs.T.tolist(), counts.tolist()):
        most[label] = max(most.get(label, 0), count)
    return len(a) - sum(most.values())


def reference_labels(vectors: np.ndarray, min_cluster_size: int, min_samples: int, order=None) -> np.ndarray:
    """fast_hdbscan on one point per photo, fed in the given order."""
    order = np.arange(len(vectors)) if order is None else order
    labels = np.empty(len(vectors), dtype=np.int64)
    labels[order] = fast_hdbscan.fast_hdbscan(vectors[order], min_cluster_size=min_cluster_size,
                                              min_samples=min_samples)[0]
    return labels


def assert_spot_is_its_own_cell(labels: np.ndarray, spot: int) -> None:
    assert len(np.unique(labels[spot:])) == 1 and labels[spot] != NOISE
    assert not np.isin(labels[:spot], labels[spot]).any(), "the 40-photo spot is a cell of its own"


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("min_cluster_size", [3, 5, 8])
def test_collapsed_labels_equal_one_point_per_photo_exactly_when_the_library_is_deterministic(
        seed, min_cluster_size):
    """With min_samples=1 the library's answer does not depend on the order of the photos: ours is identical."""
    lat, lon, spot = heavy_repeats(seed)
    vectors = to_unit_vectors(lat, lon)
    reference = reference_labels(vectors, min_cluster_size, 1)
    shuffled = reference_labels(vectors, min_cluster_size, 1, np.random.default_rng(seed).permutation(len(lat)))
    assert same_partition(reference, shuffled)

    ours = photo_labels(lat, lon, min_cluster_size, 1)

    assert same_partition(ours, reference)
    assert_spot_is_its_own_cell(ours, spot)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_cluster_size,min_samples", [(5, 2), (8, 4)])
def test_collapsed_labels_agree_with_one_point_per_photo_as_well_as_the_library_with_itself(
        seed, min_cluster_size, min_samples):
    """With min_samples > 1, mutual reachability ties a photo to its nearest neighbours at one distance and
    the library's labels for a few photos change when the same photos come in another order; ours differ
    from its one-point-per-photo labels by no more than that."""
    lat, lon, spot = heavy_repeats(seed)
    vectors = to_unit_vectors(lat, lon)
    reference = reference_labels(vectors, min_cluster_size, min_samples)
    rng = np.random.default_rng(seed)
    itself = max(relabelled_photos(reference_labels(vectors, min_cluster_size, min_samples,
                                                    rng.permutation(len(lat))), reference) for _ in range(5))

    ours = photo_labels(lat, lon, min_cluster_size, min_samples)

    allowed = max(2 * itself, 0.02 * len(lat))
    assert relabelled_photos(ours, reference) <= allowed
    assert relabelled_photos(reference, ours) <= allowed
    assert_spot_is_its_own_cell(ours, spot)


def test_cluster_ids_have_no_gaps_and_identical_coordinates_share_a_cell():
    lat, lon, _ = heavy_repeats(3)
    labels = photo_labels(lat, lon)
    ids = np.unique(labels[labels != NOISE])
    assert np.array_equal(ids, np.arange(len(ids)))
    distinct = collapse_coordinates(lat, lon)
    assert len(distinct) < len(lat)
    for index in np.flatnonzero(distinct.photos > 1)[:20]:
        assert len(np.unique(labels[distinct.photo_to_distinct == index])) == 1


def test_a_town_on_the_antimeridian_is_one_cell():
    rng = np.random.default_rng(0)
    lat, lon = town(rng, -16.8, 180.0, 80, radius_km=2.0)  # Taveuni, Fiji: the 180th meridian runs through it
    assert (lon > 179.9).any() and (lon < -179.9).any()
    other_lat, other_lon = town(rng, -18.1, 178.4, 50, radius_km=2.0)
    labels = photo_labels(np.concatenate([lat, other_lat]), np.concatenate([lon, other_lon]))
    town_labels = np.unique(labels[:80])
    assert len(town_labels) == 1 and town_labels[0] != NOISE
    assert not np.isin(labels[80:], town_labels).any()


def test_a_cluster_at_the_north_pole_is_one_cell():
    rng = np.random.default_rng(1)
    lat, lon = town(rng, 90.0, 0.0, 60, radius_km=2.0)
    assert np.ptp(lon) > 300  # every longitude: in degrees the photos look far apart
    other_lat, other_lon = town(rng, 78.2, 15.6, 50, radius_km=2.0)  # Longyearbyen
    labels = photo_labels(np.concatenate([lat, other_lat]), np.concatenate([lon, other_lon]))
    pole = np.unique(labels[:60])
    assert len(pole) == 1 and pole[0] != NOISE
    assert not np.isin(labels[60:], pole).any()


def test_collapse_treats_signed_zero_as_one_coordinate():
    distinct = collapse_coordinates(np.array([0.0, -0.0, 1.0]), np.array([5.0, 5.0, 5.0]))
    assert len(distinct) == 2 and sorted(distinct.photos.tolist()) == [1, 2]


@pytest.mark.parametrize("photos", [0, 1, 4])
def test_too_few_photos_are_all_noise(photos):
    lat, lon = np.full(photos, 10.0) + np.arange(photos) * 1e-4, np.full(photos, 20.0)
    assert (photo_labels(lat, lon) == NOISE).all()


def test_noise_goes_to_the_nearest_cell():
    vectors = to_unit_vectors(np.array([0.0, 0.01, 10.0, 10.01, 5.2]), np.zeros(5))
    labels = np.array([0, 0, 1, 1, NOISE])
    assert assign_noise_to_nearest(vectors, labels).tolist() == [0, 0, 1, 1, 1]
    assert assign_noise_to_nearest(vectors, np.full(5, NOISE)).tolist() == [NOISE] * 5


def test_compact_labels_fill_gaps_keep_noise():
    assert compact_labels(np.array([7, NOISE, 3, 7])).tolist() == [1, NOISE, 0, 1]


def test_levels_follow_the_data_document():
    assert cells_per_level(10_000, 3) == [10_000, 1000, 100]
    assert cells_per_level(10_000, 5) == [10_000, 1000, 100, 10, 1]
    assert cells_per_level(0, 3) == [0, 0, 0]
    with pytest.raises(ValueError):
        cells_per_level(10, 6)


def test_every_finer_cell_has_exactly_one_parent():
    rng = np.random.default_rng(4)
    lat, lon = from_unit_vectors(rng.normal(size=(3000, 3)))
    vectors = to_unit_vectors(lat, lon)
    finest = rng.integers(-1, 400, size=3000)
    finest = compact_labels(finest)
    levels = coarser_levels(vectors, np.ones(3000, dtype=np.int64), finest, 3)
    assert [int(level.max()) + 1 for level in levels][0] == 400
    for finer, coarser in zip(levels, levels[1:]):
        assert np.array_equal(finer == NOISE, coarser == NOISE)
        pairs = np.unique(np.stack([finer[finer != NOISE], coarser[coarser != NOISE]]), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1]
    assert int(levels[1].max()) + 1 <= 400 ** 0.75 and int(levels[2].max()) + 1 <= 20


def test_spherical_kmeans_keeps_antimeridian_neighbours_together():
    rng = np.random.default_rng(5)
    east = town(rng, 0.0, 179.99, 30, radius_km=5.0)
    west = town(rng, 0.0, -179.99, 30, radius_km=5.0)
    far = town(rng, 0.0, 0.0, 30, radius_km=5.0)
    lat = np.concatenate([east[0], west[0], far[0]])
    lon = np.concatenate([east[1], west[1], far[1]])
    labels = spherical_kmeans(to_unit_vectors(lat, lon), np.ones(90), k=2)
    assert len(np.unique(labels[:60])) == 1 and labels[0] != labels[60]


@pytest.mark.parametrize("min_samples", [1, 2, 4])
def test_the_spanning_tree_is_a_minimum_one_of_photo_weighted_mutual_reachability(min_samples):
    """Our Borůvka against scipy's on the dense graph: towns, countryside and heavy spots, more points than the
    neighbour lists hold, so both the lists and the tree searches decide edges."""
    from scipy.sparse.csgraph import minimum_spanning_tree
    from scipy.spatial.distance import cdist

    from geoloc.cells.hdbscan_weighted import mutual_reachability_mst

    lat, lon, _ = heavy_repeats(min_samples)
    distinct = collapse_coordinates(lat, lon)
    points, photos = distinct.unit_vectors, distinct.photos
    edges, core = mutual_reachability_mst(points, photos, min_samples)

    reachability = np.maximum(cdist(points, points), np.maximum(core[:, None], core[None, :]))
    expected = minimum_spanning_tree(reachability).sum()
    assert len(edges) == len(points) - 1
    assert edges[:, 2].sum() == pytest.approx(expected, rel=1e-5)
    joined = np.zeros(len(points), dtype=bool)
    joined[edges[:, :2].astype(int).ravel()] = True
    assert joined.all()
