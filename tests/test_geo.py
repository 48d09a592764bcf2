import math

import numpy as np
import pytest
from geopy.distance import geodesic as geopy_geodesic
from geopy.distance import great_circle as geopy_great_circle
from hypothesis import given, settings
from hypothesis import strategies as st

from geoloc.geo import (
    EARTH_RADIUS_KM,
    CoordinateStatus,
    chord_to_km,
    coordinate_status,
    distance_km,
    from_unit_vectors,
    geodesic_km,
    great_circle_km,
    mean_directions,
    normalize_longitude,
    spherical_mean,
    to_unit_vectors,
)

latitudes = st.floats(-90, 90, allow_nan=False)
longitudes = st.floats(-180, 180, allow_nan=False)
points = st.tuples(latitudes, longitudes)
HALF_CIRCUMFERENCE_KM = math.pi * EARTH_RADIUS_KM


@given(points, points)
def test_great_circle_is_symmetric_and_bounded(a, b):
    ab = great_circle_km(a[0], a[1], b[0], b[1])
    ba = great_circle_km(b[0], b[1], a[0], a[1])
    assert ab == pytest.approx(ba, abs=1e-9)
    assert 0.0 <= ab <= HALF_CIRCUMFERENCE_KM + 1e-9


@given(points, points, points)
def test_great_circle_triangle_inequality(a, b, c):
    ab = great_circle_km(a[0], a[1], b[0], b[1])
    bc = great_circle_km(b[0], b[1], c[0], c[1])
    ac = great_circle_km(a[0], a[1], c[0], c[1])
    assert ac <= ab + bc + 1e-6


@given(points, points)
def test_great_circle_agrees_with_geopy(a, b):
    expected = geopy_great_circle(a, b, radius=EARTH_RADIUS_KM).km
    assert great_circle_km(a[0], a[1], b[0], b[1]) == pytest.approx(expected, abs=1e-6)


@settings(max_examples=200)
@given(points, points)
def test_geodesic_agrees_with_geopy(a, b):
    expected = geopy_geodesic(a, b, ellipsoid="WGS-84").km
    assert geodesic_km(a[0], a[1], b[0], b[1]) == pytest.approx(expected, abs=1e-6)


def test_identical_points_are_zero_apart():
    lat = np.array([0.0, 45.0, -89.999, 90.0])
    lon = np.array([0.0, 179.9, -33.0, 12.0])
    assert np.all(great_circle_km(lat, lon, lat, lon) == 0.0)
    assert np.all(geodesic_km(lat, lon, lat, lon) == 0.0)


def test_antimeridian_is_not_a_wall():
    # 0.2 degrees of longitude across the date line, on the equator.
    expected = EARTH_RADIUS_KM * math.radians(0.2)
    assert great_circle_km(0.0, 179.9, 0.0, -179.9) == pytest.approx(expected, rel=1e-9)
    assert great_circle_km(0.0, 180.0, 0.0, -180.0) == pytest.approx(0.0, abs=1e-9)


@given(longitudes, longitudes)
def test_every_longitude_at_a_pole_is_the_same_point(lon1, lon2):
    assert great_circle_km(90.0, lon1, 90.0, lon2) == pytest.approx(0.0, abs=1e-6)
    assert great_circle_km(-90.0, lon1, -90.0, lon2) == pytest.approx(0.0, abs=1e-6)


def test_antipodes_are_half_the_circumference_apart():
    assert great_circle_km(0.0, 0.0, 0.0, 180.0) == pytest.approx(HALF_CIRCUMFERENCE_KM, rel=1e-12)
    assert great_circle_km(90.0, 0.0, -90.0, 0.0) == pytest.approx(HALF_CIRCUMFERENCE_KM, rel=1e-12)
    assert great_circle_km(35.0, 139.0, -35.0, -41.0) == pytest.approx(HALF_CIRCUMFERENCE_KM, rel=1e-12)
    # Pole to pole on the ellipsoid: twice the meridian quadrant, 10001.966 km.
    assert geodesic_km(90.0, 0.0, -90.0, 0.0) == pytest.approx(20003.931, abs=1e-3)


def test_distances_broadcast_and_propagate_nan():
    d = distance_km(np.array([0.0, np.nan]), np.array([0.0, 0.0]), 0.0, 1.0)
    assert d.shape == (2,)
    assert d[0] == pytest.approx(EARTH_RADIUS_KM * math.radians(1.0))
    assert np.isnan(d[1])
    assert np.isnan(distance_km(np.nan, 0.0, 0.0, 1.0, method="geodesic"))


def test_unknown_distance_method_is_a_clear_error():
    with pytest.raises(ValueError, match="great-circle, geodesic"):
        distance_km(0, 0, 1, 1, method="manhattan")


@given(latitudes, longitudes)
def test_unit_vectors_round_trip(lat, lon):
    xyz = to_unit_vectors(lat, lon)
    assert np.linalg.norm(xyz) == pytest.approx(1.0)
    back_lat, back_lon = from_unit_vectors(xyz)
    # Compare as points: longitude is arbitrary at the poles and 180 == -180.
    assert great_circle_km(lat, lon, back_lat, back_lon) == pytest.approx(0.0, abs=1e-6)
    assert -180.0 <= back_lon < 180.0


@given(points, points)
def test_chord_between_unit_vectors_is_the_great_circle_distance(a, b):
    chord = np.linalg.norm(to_unit_vectors(*a) - to_unit_vectors(*b))
    assert chord_to_km(chord) == pytest.approx(great_circle_km(*a, *b), abs=1e-3)  # 1 m: arcsin is steep at antipodes


def test_unit_vector_axes():
    np.testing.assert_allclose(to_unit_vectors([0, 0, 90], [0, 90, 0]), np.eye(3), atol=1e-15)


def test_normalize_longitude():
    np.testing.assert_array_equal(
        normalize_longitude([-540.0, -180.0, 0.0, 180.0, 190.0, 359.0, 720.5]),
        [-180.0, -180.0, 0.0, -180.0, -170.0, -1.0, 0.5],
    )


def test_spherical_mean_across_the_antimeridian_and_at_the_pole():
    lat, lon = spherical_mean([10.0, 10.0], [179.0, -179.0])
    assert lat == pytest.approx(10.0, abs=0.01)
    assert abs(lon) == pytest.approx(180.0)
    lat, _ = spherical_mean([89.0, 89.0, 89.0, 89.0], [0.0, 90.0, 180.0, -90.0])
    assert lat == pytest.approx(90.0)


def test_spherical_mean_weights_pull_towards_the_heavier_point():
    lat, lon = spherical_mean([0.0, 0.0], [0.0, 90.0], weights=[1.0, 3.0])
    assert lat == pytest.approx(0.0)
    assert lon == pytest.approx(math.degrees(math.atan2(3.0, 1.0)))


def test_mean_directions_per_group_leave_undefined_groups_nan_for_the_caller():
    vectors = to_unit_vectors([10.0, 10.0, 0.0, 0.0, 45.0, 0.0], [179.0, -179.0, 0.0, 180.0, 45.0, 0.0])
    groups = np.array([0, 0, 1, 1, -1, 3])
    directions = mean_directions(vectors, groups, 4)
    lat, lon = from_unit_vectors(directions[[0, 3]])
    assert lat == pytest.approx([10.0, 0.0], abs=0.01) and abs(lon[0]) == pytest.approx(180.0)
    assert np.isnan(directions[1]).all() and np.isnan(directions[2]).all()  # antipodes cancel; group 2 is empty
    assert np.linalg.norm(directions[[0, 3]], axis=1) == pytest.approx([1.0, 1.0])
    heavier = mean_directions(vectors[:2], [0, 0], 1, weights=[1.0, 3.0])
    assert from_unit_vectors(heavier)[1][0] < 0  # pulled towards -179


def test_spherical_mean_refuses_what_has_no_mean():
    with pytest.raises(ValueError, match="cancel out"):
        spherical_mean([0.0, 0.0], [0.0, 180.0])
    with pytest.raises(ValueError, match="no points"):
        spherical_mean([], [])


def test_coordinate_status():
    lat = [45.0, np.nan, 91.0, -90.0, 10.0, np.inf, 0.0, 0.0, 0.0]
    lon = [7.0, 1.0, 0.0, 180.0, -180.5, 0.0, 0.0, 1e-9, np.nan]
    ok, bad, null = CoordinateStatus.OK, CoordinateStatus.BAD_COORDINATES, CoordinateStatus.NULL_ISLAND
    np.testing.assert_array_equal(coordinate_status(lat, lon), [ok, bad, bad, ok, bad, bad, null, ok, bad])
    assert CoordinateStatus.NULL_ISLAND.reason == "null_island"
    assert CoordinateStatus.BAD_COORDINATES.reason == "bad_coordinates"


@pytest.mark.parametrize("distance", [great_circle_km, geodesic_km])
def test_distances_on_more_rows_than_a_block_keep_shape_and_values(distance):
    """Millions of rows go block by block, blocks on several threads: the same values, in the input's shape."""
    rng = np.random.default_rng(4)
    lat1, lat2 = rng.uniform(-90, 90, (2, 400, 500))
    lon1, lon2 = rng.uniform(-180, 180, (2, 400, 500))
    whole = distance(lat1, lon1, lat2, lon2)
    assert whole.shape == (400, 500)
    row_by_row = np.stack([distance(a, b, c, d) for a, b, c, d in zip(lat1, lon1, lat2, lon2)])
    np.testing.assert_array_equal(whole, row_by_row)
    assert distance(lat1[0, 0], lon1[0, 0], lat2[:, 0], lon2[:, 0]).shape == (400,)
    assert isinstance(distance(lat1[0, 0], lon1[0, 0], lat2[0, 0], lon2[0, 0]), np.float64)
