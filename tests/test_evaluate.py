import json
import math

import numpy as np
import polars as pl
import pytest
from geopy.distance import geodesic as geopy_geodesic
from geopy.distance import great_circle as geopy_great_circle
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.evaluate import evaluate_files, load_truth, metrics_from_distances
from geoloc.geo import EARTH_RADIUS_KM
from geoloc.tables import TableError, read_table, write_table

# id, true (lat, lon), predicted (lat, lon) or None when there is no prediction.
EDGE_CASES = [
    ("identical", (48.8584, 2.2945), (48.8584, 2.2945)),
    ("antimeridian", (-16.78, 179.34), (-16.5, -179.9)),
    ("north-pole", (90.0, 0.0), (89.9, 123.0)),
    ("south-pole", (-90.0, 45.0), (-90.0, -135.0)),
    ("antipodes", (35.0, 139.0), (-35.0, -41.0)),
    ("city-level", (40.689167, -74.044444), (40.7128, -74.0060)),
    ("region-level", (27.175015, 78.042155), (28.6139, 77.2090)),
    ("country-level", (-33.856784, 151.215297), (-37.8136, 144.9631)),
    ("continent-level", (64.146582, -21.942635), (60.1699, 24.9384)),
    ("missing", (-77.846323, 166.668235), None),
    ("also-missing", (1.283404, 103.860809), None),
]


def independent_metrics(distance, inclusive: bool = False) -> dict:
    """Recompute every figure the way a published script would: one photo at a time."""
    n = len(EDGE_CASES)
    errors = [distance(true, pred) for _, true, pred in EDGE_CASES if pred is not None]
    figures = {"n": n, "missing": n - len(errors)}
    for threshold in (1, 25, 200, 750, 2500):
        figures[f"acc_{threshold}km"] = sum((e <= threshold) if inclusive else (e < threshold) for e in errors) / n
    figures["median_km"] = float(np.median(errors))
    figures["mean_km"] = sum(errors) / len(errors)
    figures["geoscore"] = sum(5000 * math.exp(-e / 1492.7) for e in errors) / n
    return figures


@pytest.fixture
def benchmark_files(tmp_path):
    truth = tmp_path / "im2gps3k_places365.csv"
    truth.write_text(
        "IMG_ID,AUTHOR,LAT,LON,S3_Label\n"
        + "".join(f"{name}.jpg,someone@N00,{t[0]},{t[1]},1\n" for name, t, _ in EDGE_CASES)
    )
    predicted = [(f"{name}.jpg", p[0], p[1]) for name, _, p in EDGE_CASES if p is not None]
    predictions = tmp_path / "predictions.parquet"
    pl.DataFrame(predicted, schema=["image_id", "lat", "lon"], orient="row").write_parquet(predictions)
    return truth, predictions


@pytest.mark.parametrize("inclusive", [False, True])
@pytest.mark.parametrize(
    "method, reference",
    [
        ("great-circle", lambda a, b: geopy_great_circle(a, b, radius=EARTH_RADIUS_KM).km),
        ("geodesic", lambda a, b: geopy_geodesic(a, b, ellipsoid="WGS-84").km),
    ],
)
def test_figures_match_an_independent_computation(benchmark_files, method, reference, inclusive):
    truth, predictions = benchmark_files
    metrics = evaluate_files(predictions, truth, method=method, inclusive=inclusive).metrics
    expected = independent_metrics(reference, inclusive)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    assert metrics["unknown"] == 0
    # Within 1 km: identical (0 km) and the south pole (any longitude there is the same point).
    # Within 25 km: also the north pole (0.1 degree off, 11 km) and the city-level guess.
    assert metrics["acc_1km"] == pytest.approx(2 / 11)
    assert metrics["acc_25km"] == pytest.approx(4 / 11)


def test_a_photo_exactly_at_a_radius_counts_only_with_inclusive():
    distances = np.array([25.0, 24.999, 25.001, 200.0, 0.0, np.nan])
    below = metrics_from_distances(distances)
    at_most = metrics_from_distances(distances, inclusive=True)
    assert below["acc_25km"] == pytest.approx(2 / 6) and at_most["acc_25km"] == pytest.approx(3 / 6)
    assert below["acc_200km"] == pytest.approx(4 / 6) and at_most["acc_200km"] == pytest.approx(5 / 6)
    assert below["acc_1km"] == at_most["acc_1km"] == pytest.approx(1 / 6)


def test_missing_predictions_count_as_misses_not_as_dropped_rows():
    distances = np.array([0.5, np.nan, np.nan, 100.0])
    metrics = metrics_from_distances(distances)
    assert metrics["n"] == 4 and metrics["missing"] == 2
    assert metrics["acc_1km"] == 0.25
    assert metrics["acc_200km"] == 0.5
    assert metrics["median_km"] == pytest.approx(50.25)
    assert metrics["geoscore"] == pytest.approx((5000 * math.exp(-0.5 / 1492.7) + 5000 * math.exp(-100 / 1492.7)) / 4)


@pytest.mark.parametrize("rows", [1, 2, 7, 1000, 1001])
def test_median_mean_and_score_equal_numpy_on_the_predicted_rows(rows):
    """The figures come from a partial sort that moves missing rows (NaN) last: same values as on the predicted ones."""
    rng = np.random.default_rng(rows)
    distances = rng.uniform(0, 20_000, rows)
    distances[rng.random(rows) < 0.3] = np.nan
    distances[0] = 3.0  # at least one prediction
    predicted = distances[~np.isnan(distances)]
    metrics = metrics_from_distances(distances)
    assert metrics["missing"] == rows - predicted.size
    assert metrics["median_km"] == np.median(predicted)
    assert metrics["mean_km"] == pytest.approx(predicted.mean(), rel=1e-12)
    assert metrics["geoscore"] == pytest.approx((5000 * np.exp(-predicted / 1492.7)).sum() / rows, rel=1e-12)
    assert metrics["acc_2500km"] == np.count_nonzero(predicted < 2500) / rows


def test_nothing_predicted_gives_zero_accuracy_and_no_median():
    metrics = metrics_from_distances(np.array([np.nan, np.nan]))
    assert metrics["acc_2500km"] == 0.0 and metrics["geoscore"] == 0.0
    assert metrics["median_km"] is None and metrics["mean_km"] is None


def test_empty_cells_in_predictions_mean_no_prediction(tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("image_id,lat,lon\na,10,10\nb,20,20\n")
    predictions = tmp_path / "p.csv"
    predictions.write_text("image_id,lat,lon\na,10,10\nb,,\n")
    metrics = evaluate_files(predictions, truth).metrics
    assert metrics["missing"] == 1 and metrics["acc_1km"] == 0.5


def test_rows_already_in_the_truths_order_score_as_the_joined_ones(tmp_path, benchmark_files, monkeypatch):
    """A predictions file in the truth's order (or with its own truth) is paired row by row, with no id join."""
    truth, shuffled = benchmark_files
    joined = evaluate_files(shuffled, truth)
    in_order = tmp_path / "in_order.parquet"
    rows = [(f"{name}.jpg", *(p if p else (None, None))) for name, _, p in EDGE_CASES]
    frame = pl.DataFrame(rows, schema=["image_id", "lat", "lon"], orient="row")
    frame.with_columns(pl.when(pl.col("image_id") == "missing.jpg").then(12.0).otherwise("lat").alias("lat"))\
        .write_parquet(in_order)  # a lat without its lon: no prediction, not an impossible one
    embedded = tmp_path / "embedded.parquet"
    true_columns = load_truth(truth).select(pl.col("lat").alias("true_lat"), pl.col("lon").alias("true_lon"))
    pl.concat([frame, true_columns], how="horizontal").write_parquet(embedded)
    monkeypatch.setattr("geoloc.evaluate._id_key", lambda: pytest.fail("paired rows were joined on ids"))
    for paired in (evaluate_files(in_order, truth), evaluate_files(embedded)):
        assert paired.metrics == joined.metrics
        assert paired.truth.equals(joined.truth)
        assert paired.unknown_ids.is_empty()


def test_ids_keep_their_text(tmp_path):
    # YFCC ids look like numbers; a leading zero must survive on both sides of the join.
    truth = tmp_path / "truth.csv"
    truth.write_text("IMG_ID,LAT,LON\n0123,10,10\n123,20,20\n")
    predictions = tmp_path / "p.csv"
    predictions.write_text("image_id,lat,lon\n0123,10,10\n")
    metrics = evaluate_files(predictions, truth).metrics
    assert metrics["missing"] == 1 and metrics["acc_1km"] == 0.5
    assert load_truth(truth)["image_id"].to_list() == ["0123", "123"]


def test_unknown_ids_are_reported_and_not_scored(tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("image_id,lat,lon\na,10,10\n")
    predictions = tmp_path / "p.csv"
    predictions.write_text("image_id,lat,lon\na,10,10\nstranger,0,0\n")
    evaluation = evaluate_files(predictions, truth)
    assert evaluation.metrics["unknown"] == 1 and evaluation.metrics["n"] == 1
    assert evaluation.unknown_ids.to_list() == ["stranger"]


def test_ids_sharing_a_join_hash_are_still_told_apart(benchmark_files, monkeypatch):
    """The id join runs on 64-bit hashes and proves each match; colliding hashes fall back to the strings."""
    import geoloc.evaluate as evaluation_module

    truth, predictions = benchmark_files
    expected = evaluate_files(predictions, truth).metrics
    monkeypatch.setattr(evaluation_module, "_id_key", lambda: pl.lit(7, dtype=pl.UInt64).alias("_key"))
    colliding = evaluate_files(predictions, truth)
    assert colliding.metrics == expected
    with_stranger = pl.concat([pl.read_parquet(predictions), pl.DataFrame({"image_id": ["x.jpg"], "lat": [1.0],
                                                                          "lon": [2.0]})])
    with_stranger.write_parquet(predictions)
    assert evaluate_files(predictions, truth).unknown_ids.to_list() == ["x.jpg"]


@pytest.mark.parametrize("side", ["truth", "predictions"])
def test_duplicate_ids_are_an_error_that_names_them(tmp_path, side):
    rows = {"truth": "image_id,lat,lon\na,1,1\nb,2,2\n", "predictions": "image_id,lat,lon\na,1,1\nb,2,2\n"}
    rows[side] += "b,3,3\na,4,4\n"
    for name, text in rows.items():
        (tmp_path / f"{name}.csv").write_text(text)
    with pytest.raises(TableError, match=rf"2 image id\(s\) appear more than once in the {side}: 'a', 'b'"):
        evaluate_files(tmp_path / "predictions.csv", tmp_path / "truth.csv")


@pytest.mark.parametrize(
    "truth_text, predictions_text, message",
    [
        ("image_id,lat,lon\na,95,0\n", "image_id,lat,lon\na,1,1\n", r"impossible coordinates.*'a'"),
        ("image_id,lat,lon\na,1,1\n", "image_id,lat,lon\na,1,181\n", r"impossible coordinates.*'a'"),
        ("image_id,lat,lon\na,,1\n", "image_id,lat,lon\na,1,1\n", r"no coordinates: 'a'"),
        ("image_id,lat,lon\na,north,1\n", "image_id,lat,lon\na,1,1\n", r"not numbers: a='north'"),
        ("id,lat_deg,lon_deg\na,1,1\n", "image_id,lat,lon\na,1,1\n",
         r"expected columns \(image_id, lat, lon\) or \(IMG_ID, LAT, LON\) or \(id, latitude, longitude\)"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, truth_text, predictions_text, message):
    (tmp_path / "truth.csv").write_text(truth_text)
    (tmp_path / "p.csv").write_text(predictions_text)
    with pytest.raises(TableError, match=message):
        evaluate_files(tmp_path / "p.csv", tmp_path / "truth.csv")


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(TableError, match="no such file"):
        evaluate_files(tmp_path / "nope.csv", tmp_path / "truth.csv")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(TableError, match="unknown table format '.txt'"):
        evaluate_files(tmp_path / "p.txt", tmp_path / "truth.csv")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_read_table_reads_only_the_columns_asked_for(tmp_path, suffix):
    path = tmp_path / f"catalog{suffix}"
    write_table(pl.DataFrame({"image_id": ["007", "8"], "uri": ["a.jpg", "b.jpg"], "lat": ["1.5", "2"]}), path)
    assert read_table(path, columns=["lat", "image_id"]).to_dict(as_series=False) == {
        "lat": ["1.5", "2"], "image_id": ["007", "8"]}
    with pytest.raises(TableError, match="missing column\\(s\\) lon; found image_id, uri, lat"):
        read_table(path, columns=["image_id", "lon"])


def test_truth_can_come_from_the_predictions_themselves(tmp_path):
    predictions = tmp_path / "p.csv"
    predictions.write_text("image_id,lat,lon,true_lat,true_lon\na,0,0,0,0\nb,,,10,10\n")
    metrics = evaluate_files(predictions).metrics
    assert metrics["n"] == 2 and metrics["missing"] == 1 and metrics["acc_1km"] == 0.5
    with pytest.raises(TableError, match="no truth given"):
        (tmp_path / "q.csv").write_text("image_id,lat,lon\na,0,0\n")
        evaluate_files(tmp_path / "q.csv")


@pytest.mark.parametrize("inclusive", [False, True])
def test_cli_json_is_the_last_line_with_every_figure(benchmark_files, inclusive):
    truth, predictions = benchmark_files
    flags = ["--inclusive"] if inclusive else []
    result = CliRunner().invoke(app, ["evaluate", str(predictions), "--truth", str(truth), "--json", *flags])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    expected = independent_metrics(lambda a, b: geopy_great_circle(a, b, radius=EARTH_RADIUS_KM).km, inclusive)
    for key, value in expected.items():
        assert payload[key] == pytest.approx(value), key
    assert payload["distance"] == "great-circle"
    assert payload["radius_rule"] == ("<=" if inclusive else "<")


def test_cli_table_states_the_radius_rule(tmp_path):
    (tmp_path / "truth.csv").write_text("image_id,lat,lon\na,0,0\n")
    (tmp_path / "p.csv").write_text("image_id,lat,lon\na,0,0\n")
    for flags, rule in (([], "<"), (["--inclusive"], "<=")):
        result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "p.csv"), "--truth", str(tmp_path / "truth.csv"),
                                          "--no-continents", *flags], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert f"counted when error {rule} radius" in result.stdout


def test_cli_table_has_a_per_continent_breakdown(benchmark_files):
    truth, predictions = benchmark_files
    arguments = ["evaluate", str(predictions), "--truth", str(truth), "--distance", "geodesic"]
    result = CliRunner().invoke(app, arguments, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "geodesic distance" in out
    for continent in ("Europe", "Asia", "Oceania", "Antarctica", "North America"):
        assert continent in out
    assert "Unknown" not in out


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    (tmp_path / "p.csv").write_text("image_id,lat,lon\na,1,1\na,1,1\n")
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "p.csv"), "--truth", str(tmp_path / "p.csv")])
    assert result.exit_code == 2
    assert "appear more than once" in result.stderr
    assert "Traceback" not in result.output


def test_a_benchmark_file_of_the_wrong_size_is_warned_about_and_still_scored(tmp_path):
    (tmp_path / "yfcc4k_places365.csv").write_text("IMG_ID,LAT,LON\na,10,10\nb,20,20\nc,30,30\n")
    (tmp_path / "p.csv").write_text("image_id,lat,lon\na,10,10\n")
    arguments = ["evaluate", str(tmp_path / "p.csv"), "--truth", str(tmp_path / "yfcc4k_places365.csv"), "--json"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "3 photos, but YFCC4K's yfcc4k_places365.csv has 4,536" in " ".join(result.stderr.split())
    assert json.loads(result.stdout.strip().splitlines()[-1])["acc_1km"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("name, rows, warned", [
    ("im2gps3k_places365.csv", 2997, True),  # the right size, but not IM2GPS3K's ids
    ("im2gps3k_places365.csv", 2996, True),
    ("IM2GPS3K_places365.csv", 11, True),
    ("my_benchmark.csv", 11, False),
])
def test_size_warning_for_a_benchmark_name_with_other_photos(tmp_path, name, rows, warned):
    (tmp_path / name).write_text("IMG_ID,LAT,LON\n" + "".join(f"{i},1,{i % 180}\n" for i in range(rows)))
    (tmp_path / "p.csv").write_text("image_id,lat,lon\n0,1,0\n")
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "p.csv"), "--truth", str(tmp_path / name), "--json"])
    assert result.exit_code == 0, result.output
    assert ("warning" in result.stderr) is warned
    if warned:
        assert "2,997" in result.stderr
