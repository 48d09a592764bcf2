"""Prediction files as published projects write them, swapped coordinates, tables at 80 columns, the registry."""

import json
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from geopy.distance import great_circle
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.evaluate import evaluate_files
from geoloc.evaluate import registry as registry_module
from geoloc.evaluate.layouts import read_prediction_file, stated_figure_key
from geoloc.evaluate.registry import Benchmark, identify, published_digests
from geoloc.geo import EARTH_RADIUS_KM
from geoloc.tables import TableError

RNG = np.random.default_rng(28)
IDS = [f"{1000 + i}_{i:04x}ab_1_{i}@N00.jpg" for i in range(40)]
TRUE_LAT, TRUE_LON = RNG.uniform(-50, 65, 40), RNG.uniform(-170, 170, 40)
PRED_LAT = np.clip(TRUE_LAT + RNG.normal(scale=1.0, size=40), -90, 90)
PRED_LON = np.clip(TRUE_LON + RNG.normal(scale=1.0, size=40), -180, 180)


def errors_km() -> list[float]:
    return [great_circle((a, b), (c, d), radius=EARTH_RADIUS_KM).km
            for a, b, c, d in zip(TRUE_LAT, TRUE_LON, PRED_LAT, PRED_LON)]


def write_geoestimation(path, accuracy_1km_stated=None):
    """As GeoEstimation's results files: the rows, a blank line, the header and row of its figures."""
    errors = errors_km()
    lines = ["img_id,gt_lat,predicted_lat,gt_long,predicted_long,great_circle_distance"]
    lines += [f"{i},{a},{c:.6f},{b},{d:.6f},{e:.2f}"
              for i, a, b, c, d, e in zip(IDS, TRUE_LAT, TRUE_LON, PRED_LAT, PRED_LON, errors)]
    shares = [sum(e < radius for e in errors) / len(errors) for radius in (1, 25, 200, 750, 2500)]
    if accuracy_1km_stated is not None:
        shares[0] = accuracy_1km_stated
    trailer = ["street acc (1km),city acc (25km),region acc (200km),country acc (750km),continent acc (2500km),"
               "mean deviation (km)",
               ",".join(f"{share:.6g}" for share in shares) + f",{np.mean(errors):.2f}"]
    path.write_text("\n".join(lines) + "\n\n" + "\n".join(trailer) + "\n")
    return shares


def test_geoestimation_results_file_is_read_with_its_trailer_set_aside(tmp_path):
    path = tmp_path / "base_M-m.csv"
    shares = write_geoestimation(path)
    read = read_prediction_file(path)
    assert read.layout.name == "GeoEstimation results"
    assert read.frame.height == 40  # the trailer is not a photo
    assert read.stated_figures["acc_25km"] == pytest.approx(shares[1], abs=1e-6)
    assert set(read.stated_figures) == {"acc_1km", "acc_25km", "acc_200km", "acc_750km", "acc_2500km", "mean_km"}
    metrics = evaluate_files(path).metrics  # its own gt_lat / gt_long are the truth
    assert metrics["acc_200km"] == pytest.approx(shares[2])
    assert metrics["mean_km"] == pytest.approx(np.mean(errors_km()))
    result = CliRunner().invoke(app, ["evaluate", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["layout"] == "GeoEstimation results"


def test_figures_a_file_states_wrongly_are_warned_about(tmp_path):
    path = tmp_path / "base_M-m.csv"
    write_geoestimation(path, accuracy_1km_stated=0.5)
    result = CliRunner().invoke(app, ["evaluate", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert "acc_1km states 0.5" in " ".join(result.stderr.split())


@pytest.mark.parametrize("header, key", [
    ("street acc (1km)", "acc_1km"), ("continent acc (2500km)", "acc_2500km"),
    ("mean deviation (km)", "mean_km"), ("something else", None),
])
def test_trailer_headers_map_to_our_keys(header, key):
    assert stated_figure_key(header) == key


def test_georanker_and_g3_table_as_pandas_writes_it(tmp_path):
    """The benchmark metadata with LAT_pred / LON_pred added, saved by pandas with its index column."""
    frame = pd.DataFrame({"IMG_ID": IDS, "AUTHOR": "someone@N00", "LAT": TRUE_LAT, "LON": TRUE_LON,
                          "S3_Label": 1, "LAT_pred": PRED_LAT, "LON_pred": PRED_LON, "max_reward": 0.5})
    frame["geodesic"] = 0.0
    path = tmp_path / "georanker_im2gps3k.csv"
    frame.to_csv(path)
    result = CliRunner().invoke(app, ["evaluate", str(path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.splitlines()[-1])
    assert payload["layout"] == "GeoRanker / G3 evaluation table"
    assert payload["acc_750km"] == pytest.approx(np.mean(np.array(errors_km()) < 750))


def test_osv5m_inference_output_without_header_matches_bare_ids(tmp_path):
    """OSV-5M's inference.py writes 'file name,lat,lon' lines; its test metadata's ids have no '.jpg'."""
    ids = [str(7_000_000 + i) for i in range(40)]
    (tmp_path / "out.csv").write_text("".join(f"{i}.jpg,{a},{b}\n" for i, a, b in zip(ids, PRED_LAT, PRED_LON)))
    pl.DataFrame({"id": ids, "latitude": TRUE_LAT, "longitude": TRUE_LON}).write_csv(tmp_path / "test.csv")
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "out.csv"), "--truth", str(tmp_path / "test.csv"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.splitlines()[-1])
    assert payload["layout"] == "OSV-5M inference output"
    assert payload["missing"] == 0 and payload["unknown"] == 0
    assert payload["acc_200km"] == pytest.approx(np.mean(np.array(errors_km()) < 200))


def test_an_unknown_layout_lists_the_known_ones(tmp_path):
    (tmp_path / "p.csv").write_text("photo,latitude_guess,longitude_guess\na,1,2\n")
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "p.csv")])
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "not a predictions layout geoloc knows (columns photo, latitude_guess, longitude_guess)" in message
    for name in ("GeoEstimation results", "GeoRanker / G3", "OSV-5M inference output", "geoloc predictions"):
        assert name in message
    with pytest.raises(TableError, match="LAT_pred, LON_pred"):
        read_prediction_file(tmp_path / "p.csv")


def write_swapped_metadata(path):
    """IM2GPS3K's metadata as published until 2020: LON and LAT headers over latitude, longitude values."""
    rows = "".join(f"{i},someone@N00,{a},{b},1\n" for i, a, b in zip(IDS, TRUE_LAT, TRUE_LON))
    path.write_text("IMG_ID,AUTHOR,LON,LAT,S3_Label\n" + rows)


def test_swapped_truth_gets_the_hint_and_swap_latlon_scores_it(tmp_path):
    truth = tmp_path / "im2gps3k_places365.csv"
    write_swapped_metadata(truth)
    pl.DataFrame({"image_id": IDS, "lat": PRED_LAT, "lon": PRED_LON}).write_csv(tmp_path / "p.csv")
    arguments = ["evaluate", str(tmp_path / "p.csv"), "--truth", str(truth), "--json"]
    refused = CliRunner().invoke(app, arguments)
    assert refused.exit_code == 2
    message = " ".join(refused.stderr.split())
    impossible = int(np.sum(np.abs(TRUE_LON) > 90))
    assert f"{impossible} truth row(s) have impossible coordinates" in message
    assert "swapping the latitude and longitude columns makes every row possible" in message
    assert f"--swap-latlon {truth}" in message
    result = CliRunner().invoke(app, [*arguments, "--swap-latlon", str(truth)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.splitlines()[-1])
    assert payload["acc_200km"] == pytest.approx(np.mean(np.array(errors_km()) < 200))


def test_swap_latlon_must_name_a_file_evaluated(tmp_path):
    (tmp_path / "p.csv").write_text("image_id,lat,lon,true_lat,true_lon\na,1,1,1,1\n")
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "p.csv"), "--swap-latlon", "other.csv"])
    assert result.exit_code == 2
    assert "--swap-latlon other.csv: not among the files evaluated" in result.stderr


def test_no_hint_when_swapping_would_not_help(tmp_path):
    (tmp_path / "truth.csv").write_text("image_id,lat,lon\na,95,200\nb,10,10\n")
    (tmp_path / "p.csv").write_text("image_id,lat,lon\na,1,1\nb,10,10\n")
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "p.csv"), "--truth", str(tmp_path / "truth.csv")])
    assert result.exit_code == 2
    assert "impossible coordinates" in result.stderr and "--swap-latlon" not in result.stderr


@pytest.fixture
def five_methods(tmp_path):
    truth = tmp_path / "truth.csv"
    pl.DataFrame({"image_id": IDS, "lat": TRUE_LAT, "lon": TRUE_LON}).write_csv(truth)
    paths = []
    for k, noise in enumerate((0.05, 0.3, 1.0, 3.0, 10.0)):
        path = tmp_path / f"method_with_a_long_name_{k}.csv"
        lat = np.clip(TRUE_LAT + RNG.normal(scale=noise, size=40), -90, 90)
        lon = np.clip(TRUE_LON + RNG.normal(scale=noise, size=40), -180, 180)
        pl.DataFrame({"image_id": IDS, "lat": lat, "lon": lon}).write_csv(path)
        paths.append(path)
    return truth, paths


@pytest.mark.parametrize("files", [1, 2, 5])
def test_tables_fit_80_columns_and_nothing_is_cut(five_methods, files):
    truth, paths = five_methods
    result = CliRunner().invoke(app, ["evaluate", *map(str, paths[:files]), "--truth", str(truth), "--resamples",
                                      "200"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    tables = [line for line in lines if " − " not in line]  # the quotable sentences are left to the terminal to wrap
    assert max(map(len, tables)) <= 80
    assert "…" not in result.stdout and "..." not in result.stdout
    for path in paths[:files]:
        assert path.stem in result.stdout
    if files == 5:  # too many for one table at 80 columns: a table per method, titled by it
        assert sum(line.strip() == paths[0].stem for line in lines) == 1


def test_comparisons_against_a_chosen_baseline_in_json(five_methods):
    truth, paths = five_methods
    result = CliRunner().invoke(app, ["evaluate", str(paths[0]), str(paths[4]), "--truth", str(truth), "--json",
                                      "--baseline", str(paths[4]), "--resamples", "300"])
    assert result.exit_code == 0, result.output
    baseline, other = (json.loads(line) for line in result.stdout.splitlines())
    assert baseline["predictions"] == str(paths[4]) and "comparisons" not in baseline
    at_25 = next(c for c in other["comparisons"] if c["metric"] == "acc_25km")
    assert set(at_25) == {"baseline", "predictions", "metric", "difference", "ci", "p_value", "only_baseline",
                          "only_predictions"}
    assert at_25["baseline"] == str(paths[4]) and at_25["predictions"] == str(paths[0])
    assert at_25["difference"] == pytest.approx(other["acc_25km"] - baseline["acc_25km"])
    assert at_25["ci"][0] <= at_25["difference"] <= at_25["ci"][1]
    assert at_25["only_predictions"] - at_25["only_baseline"] == round(40 * at_25["difference"])
    low, high = other["acc_25km_ci"]
    assert low <= other["acc_25km"] <= high


def test_quotable_lines_in_the_table_output(five_methods):
    truth, paths = five_methods
    result = CliRunner().invoke(app, ["evaluate", str(paths[4]), str(paths[0]), "--truth", str(truth)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if " at 25 km: " in line)
    assert line.startswith(f"{paths[0].stem} − {paths[4].stem} at 25 km: +")
    assert "points [" in line and ", p " in line


@pytest.fixture
def toy_registry(monkeypatch):
    """A registry with one benchmark of 10 published ids and one known by size only."""
    ids = pl.Series([f"toy_{i}.jpg" for i in range(10)])
    monkeypatch.setattr(registry_module, "BENCHMARKS", (Benchmark("TOY", 10, ("toy.csv",), "toy"),
                                                        Benchmark("SIZED", 7, ("sized.csv",))))
    monkeypatch.setattr(registry_module, "published_digests",
                        lambda: {"toy": frozenset(registry_module.id_digests(ids))})
    return ids


def test_registry_names_the_benchmark_and_counts_what_a_copy_lacks_or_adds(toy_registry):
    exact = identify("anything.csv", toy_registry.sample(fraction=1.0, shuffle=True, seed=1))
    assert exact.label == "TOY, 10 photos" and exact.warning is None
    subset = identify("anything.csv", toy_registry.head(8))
    assert subset.label == "TOY (lacks 2 of its 10 photos)" and "not comparable" in subset.warning
    superset = identify("anything.csv", pl.concat([toy_registry, pl.Series(["x", "y", "z"])]))
    assert superset.label == "TOY (adds 3 photos it does not have)"
    renamed = identify("toy.csv", pl.Series([str(i) for i in range(10)]))
    assert renamed.warning.endswith("has 10, and not its ids: the figures are not comparable with published ones")
    assert identify("sized.csv", pl.Series(list("abcdefg"))).label == "SIZED, 7 photos (by file name and size)"
    assert identify("other.csv", pl.Series(list("abcdefg"))).label.startswith("7 photos, the size of SIZED")
    assert identify("other.csv", pl.Series(list("abc"))) is None


def test_bundled_digests_are_the_published_sizes():
    digests = published_digests()
    assert (len(digests["im2gps3k"]), len(digests["im2gps"])) == (2997, 237)


def test_the_worked_comparison_on_the_evaluation_page_is_what_the_commands_print(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "evaluation.md").read_text()
    section = page[page.index("### A worked comparison"):]
    shown = section[section.index("```text\n") + len("```text\n"):section.index("\n```", section.index("```text"))]
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(root / "examples" / "two_methods.py"))["write_benchmark"](Path("comparison"))
    result = CliRunner().invoke(app, ["evaluate", "comparison/baseline.csv", "comparison/candidate.csv", "--truth",
                                      "comparison/truth.csv", "--no-continents"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    printed = "\n".join(line.rstrip() for line in result.stdout.strip("\n").splitlines())
    assert printed == shown
