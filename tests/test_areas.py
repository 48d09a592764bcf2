"""Area accuracies (country, region, sub-region, city) against reverse_geocoder itself."""

import json

import numpy as np
import polars as pl
import pytest
import reverse_geocoder
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.evaluate import evaluate_files
from geoloc.places import geonames_cities
from geoloc.places.areas import AREAS, area_labels

TRICKY = [
    (42.31, -83.04), (42.33, -83.05),  # Detroit / Windsor, across the US-Canada border
    (46.20, 6.14), (46.23, 6.05),  # Geneva and the French side
    (-22.56, 17.08), (-22.95, 14.51), (-17.79, 25.26), (-28.0, 16.9),  # Namibia: Windhoek, Walvis Bay, borders
    (-16.5, 179.99), (-16.5, -179.99), (65.7, 179.9), (65.7, -179.9),  # the antimeridian: Fiji, Chukotka
    (-13.8, -171.8), (-21.1, -175.2), (51.9, 179.5), (52.0, -179.0),  # Samoa, Tonga, the Aleutians
    (89.9, 0.0), (-89.9, 0.0), (0.0, 0.0), (-54.8, -68.3),  # poles, null island, Ushuaia
    (31.77, 35.23), (50.37, 30.45), (1.35, 103.82), (25.07, 121.52),  # Jerusalem, Kyiv, Singapore, Taipei
]


def reverse_geocoder_labels(points: list[tuple[float, float]]) -> dict[str, list[str]]:
    """OSV-5M's labels the way its script builds them: one dict per point from reverse_geocoder."""
    found = reverse_geocoder.search(points, mode=2, verbose=False)
    return {
        "country": [place["cc"] for place in found],
        "region": [f"{place['admin1']}_{place['cc']}" for place in found],
        "subregion": [f"{place['admin2']}_{place['admin1']}_{place['cc']}" for place in found],
        "city": [f"{place['name']}_{place['admin2']}_{place['admin1']}_{place['cc']}" for place in found],
    }


@pytest.fixture(scope="module")
def points() -> list[tuple[float, float]]:
    rng = np.random.default_rng(19)
    uniform = list(zip(rng.uniform(-90, 90, 120), rng.uniform(-180, 180, 120)))
    cities = geonames_cities()
    # Places that share their coordinates with another place: the tree's tie-break decides.
    shared = cities.filter(pl.struct("lat", "lon").is_duplicated()).sample(40, seed=19)
    populated = cities.sample(30, seed=19).select(pl.col("lat") + 0.01, pl.col("lon") - 0.01)
    return [*TRICKY, *uniform, *shared.select("lat", "lon").rows(), *populated.rows()]


def test_labels_equal_reverse_geocoder_search_point_by_point(points):
    lat, lon = np.array(points).T
    ours = area_labels(lat, lon)
    expected = reverse_geocoder_labels(points)
    assert len(points) > 200
    for area in AREAS:
        assert ours[area].to_list() == expected[area], area
    namibia = ours["country"].to_list()[4:8]
    assert namibia[:2] == ["NA", "NA"]


def test_accuracies_equal_an_independent_computation(tmp_path, points):
    rng = np.random.default_rng(7)
    truth = np.array(points)
    guesses = truth + rng.normal(scale=np.where(rng.random(len(truth)) < 0.5, 0.05, 3.0)[:, None], size=truth.shape)
    guesses[:, 0] = np.clip(guesses[:, 0], -90, 90)
    guesses[:, 1] = (guesses[:, 1] + 180) % 360 - 180
    predicted = rng.random(len(truth)) < 0.9
    ids = [f"{i:04d}" for i in range(len(truth))]
    pl.DataFrame({"IMG_ID": ids, "LAT": truth[:, 0], "LON": truth[:, 1]}).write_csv(tmp_path / "truth.csv")
    pl.DataFrame({"image_id": np.array(ids)[predicted], "lat": guesses[predicted, 0],
                  "lon": guesses[predicted, 1]}).write_parquet(tmp_path / "p.parquet")

    metrics = evaluate_files(tmp_path / "p.parquet", tmp_path / "truth.csv").metrics
    true_labels = reverse_geocoder_labels([tuple(p) for p in truth])
    guessed_labels = reverse_geocoder_labels([tuple(p) for p in guesses])
    for area in AREAS:
        hits = sum(predicted[i] and guessed_labels[area][i] == true_labels[area][i] for i in range(len(truth)))
        assert metrics[f"acc_{area}"] == hits / len(truth), area
    assert 0 < metrics["acc_city"] < metrics["acc_country"] < 1


def test_truth_file_labels_are_used_as_they_are(tmp_path):
    # OSV-5M's layout with its own labels: "nan" is no label, "NA" is Namibia.
    (tmp_path / "test.csv").write_text(
        "id,latitude,longitude,unique_country,unique_region,unique_sub-region,unique_city\n"
        "1,-22.56,17.08,NA,Khomas_NA,nan,nan\n"
        "2,48.8566,2.3522,FR,,nan,nan\n"
        "3,40.7128,-74.006,CA,New York_US,nan,nan\n"
        "4,35.68,139.69,JP,Tokyo_JP,nan,nan\n"
    )
    (tmp_path / "p.csv").write_text("image_id,lat,lon\n1,-22.56,17.08\n2,48.8566,2.3522\n3,40.7128,-74.006\n")
    metrics = evaluate_files(tmp_path / "p.csv", tmp_path / "test.csv").metrics
    # Country: Namibia and France right, the file's (wrong) CA for New York is the truth, Tokyo not predicted.
    assert metrics["acc_country"] == 2 / 4
    # Region: Paris has no label (an empty cell) and is left out; Khomas and New York right, Tokyo missed.
    assert metrics["acc_region"] == 2 / 3
    assert metrics["acc_subregion"] is None and metrics["acc_city"] is None
    assert metrics["n"] == 4 and metrics["missing"] == 1


def test_null_truth_labels_in_parquet_are_left_out(tmp_path):
    pl.DataFrame({"image_id": ["a", "b"], "lat": [48.8566, 52.52], "lon": [2.3522, 13.405],
                  "unique_country": ["FR", None]}).write_parquet(tmp_path / "truth.parquet")
    (tmp_path / "p.csv").write_text("image_id,lat,lon\na,48.85,2.35\nb,0,0\n")
    metrics = evaluate_files(tmp_path / "p.csv", tmp_path / "truth.parquet").metrics
    assert metrics["acc_country"] == 1.0
    # The other areas come from the truth coordinates: Berlin's guess at (0, 0) is wrong.
    assert metrics["acc_region"] == 0.5


def test_cli_json_and_table_carry_the_area_accuracies(tmp_path):
    (tmp_path / "truth.csv").write_text("IMG_ID,LAT,LON\na,48.8566,2.3522\nb,-22.56,17.08\n")
    (tmp_path / "p.csv").write_text("image_id,lat,lon\na,48.8566,2.3522\nb,-19.0,17.0\n")
    arguments = ["evaluate", str(tmp_path / "p.csv"), "--truth", str(tmp_path / "truth.csv"), "--no-continents"]
    result = CliRunner().invoke(app, [*arguments, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["acc_country"] == 1.0 and payload["acc_city"] == 0.5
    table = CliRunner().invoke(app, arguments, env={"COLUMNS": "200"}).stdout
    for header in ("country", "region", "sub-region", "city"):
        assert header in table


def test_the_nearest_place_is_planar_not_great_circle():
    from geoloc.places import countries

    # Just east of the antimeridian off Fiji: on the sphere Fiji's Lambasa is nearest, but in plain
    # (lat, lon) a place 360 degrees of longitude away cannot be, so OSV-5M's rule says Wallis and Futuna.
    assert area_labels([-16.5], [-179.99])["country"].to_list() == ["WF"]
    assert countries([-16.5], [-179.99])[0] == "Fiji"
