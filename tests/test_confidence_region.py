"""The confidence region on the sphere: true distances, cut at the antimeridian, closed at the poles."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoloc.geo import MERCATOR_MAX_LAT, MIN_REGION_KM, confidence_region, great_circle_km, region_bounds

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


def vertices_of(region) -> np.ndarray:
    return np.array([vertex for polygon in region for ring in polygon for vertex in ring])


@settings(max_examples=400, deadline=None)
@given(lat=st.one_of(st.sampled_from([-90.0, 90.0, 0.0]), st.floats(-90, 90)),
       lon=st.one_of(st.sampled_from([-180.0, 180.0, 540.0]), st.floats(-720, 720)),
       radius_km=st.one_of(st.sampled_from([0.0, 1e-9, 20015.0, 40000.0]), st.floats(0, 30000)))
def test_every_centre_and_radius_has_a_region_and_bounds_holding_the_centre(lat, lon, radius_km):
    region = confidence_region(lat, lon, radius_km)
    vertices = vertices_of(region)
    assert len(vertices) >= 3 and np.isfinite(vertices).all()
    assert (np.abs(vertices[:, 0]) <= 90).all() and (np.abs(vertices[:, 1]) <= 180).all()
    (south, west), (north, east) = region_bounds(region)
    edge = MERCATOR_MAX_LAT
    assert south <= float(np.clip(lat, -edge, edge)) <= north
    assert west <= (lon + 180) % 360 - 180 <= east or ((lon + 180) % 360 == 0 and east == 180)
    if radius_km < 10000:  # within a quarter of the circumference: never both poles, never the world
        assert not any({-90.0, 90.0} <= set(np.asarray(polygon[0])[:, 0]) for polygon in region)


@pytest.mark.parametrize("radius_km", [0.0, float("nan"), 0.2])
def test_a_radius_below_a_kilometre_is_a_small_region_of_one_kilometre(radius_km):
    region = confidence_region(48.86, 2.29, radius_km)
    vertices = vertices_of(region)
    np.testing.assert_allclose(great_circle_km(48.86, 2.29, vertices[:, 0], vertices[:, 1]), MIN_REGION_KM,
                               rtol=1e-6)
    (south, _), (north, _) = region_bounds(region)
    assert north - south == pytest.approx(2 * MIN_REGION_KM / 111.195, rel=1e-3)


@pytest.mark.parametrize("pole", [90.0, -90.0])
@pytest.mark.parametrize("radius_km", [0.0, 500.0])
def test_a_centre_on_a_pole_is_the_cap_round_it_not_the_world(pole, radius_km):
    region = confidence_region(pole, 30.0, radius_km)
    vertices = vertices_of(region)
    assert set(np.unique(np.abs(vertices[:, 0]) == 90.0)) == {False, True}  # closed along the pole only
    assert not (vertices[:, 0] * np.sign(pole) < 0).any(), "the region reaches the other hemisphere"
    on_circle = np.abs(vertices[:, 0]) < 90
    distance = great_circle_km(pole, 0.0, vertices[on_circle, 0], vertices[on_circle, 1])
    np.testing.assert_allclose(distance, max(radius_km, MIN_REGION_KM), atol=2e-4)  # the 11 cm offset
    assert np.ptp(vertices[:, 1]) == 360


@pytest.mark.parametrize("lon", [180.0, -180.0, 540.0])
def test_a_centre_on_the_antimeridian_is_cut_into_its_two_sides(lon):
    region = confidence_region(-16.5, lon, 0.0)
    sides = sorted(np.sign(np.mean(np.asarray(polygon[0])[:, 1])) for polygon in region)
    assert sides == [-1, 1]
    vertices = vertices_of(region)
    inside = np.abs(np.abs(vertices[:, 1]) - 180) > 1e-9
    np.testing.assert_allclose(great_circle_km(-16.5, 180.0, vertices[inside, 0], vertices[inside, 1]),
                               MIN_REGION_KM, rtol=1e-6)
