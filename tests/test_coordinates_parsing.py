import pytest

from geoloc.candidates.coordinates import parse_coordinates

PARSEABLE = [
    ('{"latitude": 48.8584, "longitude": 2.2945}', 48.8584, 2.2945),
    ('```json\n{"latitude": -33.8568, "longitude": 151.2153}\n```', -33.8568, 151.2153),
    ('Here you go: {"lat": "40.6892", "lng": "-74.0445"} hope it helps', 40.6892, -74.0445),
    ('{"latitude": "33.8568° S", "longitude": "151.2153° E"}', -33.8568, 151.2153),
    ("Latitude: 35.6586, Longitude: 139.7454", 35.6586, 139.7454),
    ("lat=-22.9519 lon=-43.2105", -22.9519, -43.2105),
    ("The photo was probably taken near Sydney, around 33.86° S, 151.21° E.", -33.86, 151.21),
    ("33.86S 151.21E", -33.86, 151.21),
    ("N 64.1466, W 21.9426", 64.1466, -21.9426),
    ("48°51'29.6\"N 2°17'40.2\"E", 48 + 51 / 60 + 29.6 / 3600, 2 + 17 / 60 + 40.2 / 3600),
    ("22°57′7″S 43°12′38″W", -(22 + 57 / 60 + 7 / 3600), -(43 + 12 / 60 + 38 / 3600)),
    ("40° 41.35' N, 74° 2.67' W", 40 + 41.35 / 60, -(74 + 2.67 / 60)),
    ("It looks like Paris in 2015. My best guess: 48.8566, 2.3522", 48.8566, 2.3522),
    ("Coordinates: (-13.1631, -72.5450)", -13.1631, -72.5450),
    ("\u221233.8568, 151.2153", -33.8568, 151.2153),
    ("I am fairly sure: 51.5007 north, 0.1246 west", 51.5007, -0.1246),
    ('{"latitude": 0, "longitude": 0}', 0.0, 0.0),
]


@pytest.mark.parametrize("answer, lat, lon", PARSEABLE)
def test_parses_every_notation_exactly(answer, lat, lon):
    parsed = parse_coordinates(answer)
    assert parsed.error is None, parsed.error
    assert parsed.lat == pytest.approx(lat, abs=1e-12)
    assert parsed.lon == pytest.approx(lon, abs=1e-12)


@pytest.mark.parametrize(
    "answer, reason",
    [
        ("I'm sorry, but I can't determine where this photo was taken.", "no coordinates"),
        ("", "empty answer"),
        (None, "empty answer"),
        ('{"latitude": 123.4, "longitude": 45.6}', "out of range"),
        ("Latitude: 45.0, Longitude: 200.5", "out of range"),
        ("There were 3 people and 2 dogs in 2019.", "no coordinates"),
        ("48°75'10\"N 2°17'40\"E", "no coordinates"),
    ],
)
def test_unreadable_answers_get_no_coordinates_and_a_reason(answer, reason):
    parsed = parse_coordinates(answer)
    assert parsed.lat is None and parsed.lon is None
    assert reason in parsed.error
