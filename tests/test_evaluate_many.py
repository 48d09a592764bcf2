"""Several prediction files side by side: JSON lines, the comparison table, the accuracy-radius plot."""

import json

import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.evaluate import accuracy_curve, evaluate_files, metrics_from_distances
from geoloc.geo import ACCURACY_THRESHOLDS_KM

ORANGE = (255, 127, 14)
"""matplotlib's second default line colour: only a plot with two lines has it."""


@pytest.fixture
def methods(tmp_path):
    """A truth file and three methods of decreasing quality, in their own folders."""
    rng = np.random.default_rng(3)
    lat, lon = rng.uniform(-60, 70, 60), rng.uniform(-180, 180, 60)
    ids = [f"{i:03d}" for i in range(60)]
    pl.DataFrame({"IMG_ID": ids, "LAT": lat, "LON": lon}).write_csv(tmp_path / "truth.csv")
    paths = []
    for name, noise in (("good", 0.02), ("fair", 1.0), ("poor", 20.0)):
        folder = tmp_path / name
        folder.mkdir()
        paths.append(folder / f"{name}.csv")
        guess_lat = np.clip(lat + rng.normal(scale=noise, size=60), -90, 90)
        guess_lon = (lon + rng.normal(scale=noise, size=60) + 180) % 360 - 180
        pl.DataFrame({"image_id": ids, "lat": guess_lat, "lon": guess_lon}).write_csv(paths[-1])
    return tmp_path / "truth.csv", paths


def test_json_lines_one_per_file_in_the_order_given(methods):
    truth, paths = methods
    order = [paths[2], paths[0], paths[1]]
    result = CliRunner().invoke(app, ["evaluate", *map(str, order), "--truth", str(truth), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [line["predictions"] for line in lines] == [str(path) for path in order]
    for line, path in zip(lines, order):
        expected = evaluate_files(path, truth).metrics
        assert {key: line[key] for key in expected} == pytest.approx(expected)
        assert line["radius_rule"] == "<"
    assert lines[1]["acc_25km"] > lines[2]["acc_25km"] > lines[0]["acc_25km"]


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The figure rows of a metrics-as-rows table: first cell -> the other cells."""
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if cells and cells[0] in ("1", "25", "200", "750", "2500") and len(cells) > 2 and cells[1] == "km":
            rows[f"{cells[0]} km"] = cells[2:]
    return rows


def test_table_has_a_column_per_method_and_the_figures_as_rows(methods):
    truth, paths = methods
    result = CliRunner().invoke(app, ["evaluate", *map(str, paths), "--truth", str(truth), "--no-ci"],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["figure"])
    assert header.split() == ["figure", "good", "fair", "poor"]
    good, fair, poor = (evaluate_files(path, truth).metrics for path in paths)
    assert table_rows(result.stdout)["1 km"] == [f"{100 * m['acc_1km']:.2f}%" for m in (good, fair, poor)]
    assert "Per continent" not in result.stdout
    for label in ("country", "sub-region", "GeoScore", "median km"):
        assert label in result.stdout


def test_methods_with_the_same_stem_are_named_by_path(methods, tmp_path):
    truth, paths = methods
    other = tmp_path / "elsewhere"
    other.mkdir()
    twin = other / "good.csv"
    twin.write_bytes(paths[0].read_bytes())
    result = CliRunner().invoke(app, ["evaluate", str(paths[0]), str(twin), "--truth", str(truth)],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert str(twin) in result.stdout and str(paths[0]) in result.stdout


def colours(path) -> set[tuple[int, int, int]]:
    with Image.open(path) as image:
        return set(map(tuple, np.asarray(image.convert("RGB")).reshape(-1, 3).tolist()))


def test_plot_is_a_readable_png_with_a_line_per_file(methods, tmp_path):
    truth, paths = methods
    one, three = tmp_path / "one.png", tmp_path / "three.png"
    for out, files in ((one, paths[:1]), (three, paths)):
        result = CliRunner().invoke(app, ["evaluate", *map(str, files), "--truth", str(truth), "--json",
                                          "--plot", str(out)])
        assert result.exit_code == 0, result.output
    with Image.open(three) as image:
        assert image.format == "PNG" and image.size == (1280, 840)
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels < 128).any() and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    assert ORANGE in colours(three) and ORANGE not in colours(one)
    assert (np.asarray(Image.open(one).convert("RGB")) != pixels).any()


def test_plot_refuses_an_unknown_image_format(methods, tmp_path):
    truth, paths = methods
    result = CliRunner().invoke(app, ["evaluate", str(paths[0]), "--truth", str(truth),
                                      "--plot", str(tmp_path / "curve.bmp")])
    assert result.exit_code == 2 and "--plot writes .png" in result.stderr
    assert not (tmp_path / "curve.bmp").exists()


@pytest.mark.parametrize("inclusive", [False, True])
def test_the_curve_at_the_standard_radii_is_the_table(inclusive):
    distances = np.array([0.0, 1.0, 24.9, 25.0, 199.0, 750.0, 3000.0, np.nan])
    curve = accuracy_curve(distances, np.asarray(ACCURACY_THRESHOLDS_KM, dtype=float), inclusive)
    metrics = metrics_from_distances(distances, inclusive=inclusive)
    assert list(curve) == [metrics[f"acc_{t}km"] for t in ACCURACY_THRESHOLDS_KM]
    assert curve[1] == (4 / 8 if inclusive else 3 / 8)
