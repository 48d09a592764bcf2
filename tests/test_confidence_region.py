"""The confidence region on the sphere: true distances, cut at the antimeridian, closed at the poles."""

import numpy as np
import pytest

from geoloc.geo import MERCATOR_MAX_LAT, confidence_region, great_circle_km, region_bounds

CASES = [(48.86, 2.29, 5.0), (10.0, 179.0, 500.0), (80.0, 0.0, 2000.0), (-70.0, 170.0, 3000.0),
         (-33.9, 151.2, 5000.0), (48.86, 2.29, 15000.0), (0.0, 0.0, 15000.0), (60.0, -170.0, 15000.0)]


def edges(ring):
    ring = np.asarray(ring)
    return ring, np.roll(ring, -1, axis=0)


@pytest.mark.parametrize(("lat", "lon", "radius_km"), CASES)
def test_vertices_off_the_map_edges_lie_at_the_radius(lat, lon, radius_km):
    vertices = np.array([v for polygon in confidence_region(lat, lon, radius_km) for ring in polygon for v in ring])
    on_circle = (np.abs(vertices[:, 0]) < 90) & (np.abs(np.abs(vertices[:, 1]) - 180) > 1e-9)
    assert on_circle.sum() >= 100
    distance = great_circle_km(lat, lon, vertices[on_circle, 0], vertices[on_circle, 1])
    np.testing.assert_allclose(distance, radius_km, rtol=1e-6)


@pytest.mark.parametrize(("lat", "lon", "radius_km"), CASES)
def test_no_edge_spans_more_than_half_the_world(lat, lon, radius_km):
    for polygon in confidence_region(lat, lon, radius_km):
        for ring in polygon:
            start, end = edges(ring)
            assert np.all(np.abs(end[:, 1] - start[:, 1]) <= 180)
            assert np.all((start[:, 1] >= -180) & (start[:, 1] <= 180))


def test_a_region_across_the_antimeridian_is_cut_in_two():
    region = confidence_region(10.0, 179.0, 500.0)
    assert len(region) == 2
    sides = sorted(np.sign(np.mean(np.asarray(polygon[0])[:, 1])) for polygon in region)
    assert sides == [-1, 1]


def test_a_region_holding_a_pole_is_closed_along_its_latitude():
    (polygon,) = confidence_region(80.0, 0.0, 2000.0)
    ring = np.asarray(polygon[0])
    at_pole = ring[ring[:, 0] == 90.0]
    assert at_pole[:, 1].min() == pytest.approx(-180) and at_pole[:, 1].max() == pytest.approx(180)
    assert not np.any(ring[:, 0] == -90.0)
    south = confidence_region(-70.0, 170.0, 3000.0)
    assert any(np.any(np.asarray(p[0])[:, 0] == -90.0) for p in south)


def test_a_region_larger_than_a_hemisphere_is_the_world_less_a_cap_round_the_antipode():
    (polygon,) = confidence_region(0.0, 0.0, 15000.0)
    world, *holes = (np.asarray(ring) for ring in polygon)
    assert world[:, 0].min() == -90 and world[:, 0].max() == 90 and np.ptp(world[:, 1]) == 360
    hole = np.concatenate(holes)
    # The hole is the cap of radius (half circumference - r) round the antipode (0, 180).
    far = great_circle_km(0.0, 180.0, hole[:, 0], hole[:, 1])
    assert far.max() <= np.pi * 6371.0088 - 15000.0 + 1e-6
    assert confidence_region(0.0, 0.0, 25000.0) == [[world.tolist()]]


def test_bounds_stay_within_mercator():
    (south, west), (north, east) = region_bounds(confidence_region(48.86, 2.29, 15000.0))
    assert south == -MERCATOR_MAX_LAT and north == MERCATOR_MAX_LAT and (west, east) == (-180, 180)
    (south, west), (north, east) = region_bounds(confidence_region(48.86, 2.29, 5.0))
    assert north - south == pytest.approx(2 * 5.0 / 111.195, rel=1e-3)
