"""Speed of `geoloc evaluate` against the per-row loop of published evaluation scripts.

Writes N random truth rows and their predictions (1 % of the photos without one) in the
published scripts' layout, one table with the truth and the prediction on each row
(GeoRanker's evaluate.py reads such a table: LAT, LON, LAT_pred, LON_pred), as a
predictions file with its own true_lat / true_lon columns; and the same rows as two files,
a truth file and the predictions shuffled, so the id join does real work. It times the
whole evaluation, once per distance, each in a fresh process (so its peak resident set is
the evaluation's own): reading, validating, pairing or joining on ids, distances and
figures. The baseline is what published scripts do, like for like: geopy's
`great_circle` (on the same mean Earth radius) against our great-circle, geopy's
`geodesic` (WGS-84) against our geodesic, each called once per row as GeoRanker's
evaluate.py calls it (a pandas `apply` over the rows, then a count per radius:
`speedup`), and in a bare list comprehension (`speedup_vs_bare_loop`, the cheapest
per-row call); both are timed on a sample and extrapolated to N rows (the loops are linear
in N), and only the loops are counted (no reading), which flatters them. `two_files` is
the great-circle evaluation of the two files, a join the published scripts do not do,
against the same loop. Those runs leave the area accuracies out; a last (great-circle,
one table) adds them, against OSV-5M's way of getting the labels:
`reverse_geocoder.search` on both sides and one label string per row, timed on the sample
and extrapolated. Then the bootstrap (`geoloc evaluate`'s intervals and paired
comparisons) over the same N photos with R resamples, in a fresh process: the intervals of
every radius, the median and GeoScore (`intervals_s`), a paired comparison with a second
method at every radius (`compare_s`), the process's peak memory before and after, against
a textbook bootstrap that draws N row indices per resample and recomputes the figures,
timed on a sample of rows and resamples and extrapolated to N rows and R resamples (its
cost is linear in both). Prints one JSON line: {"rows", "great-circle": {...},
"geodesic": {...}, "two_files": {...}, "areas": {...}, "bootstrap": {...}}, each with
ours_s, a baseline's seconds, speedup and peak_rss_mb (`--only-bootstrap`: rows and
bootstrap only).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import reverse_geocoder
from geopy.distance import geodesic, great_circle
from process_memory import peak_rss_mb, status_mb

from geoloc.evaluate import Evaluation, evaluate_files, metrics_from_distances
from geoloc.evaluate.intervals import compare, figure_intervals
from geoloc.geo import EARTH_RADIUS_KM, from_unit_vectors


def random_points(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points uniform on the sphere."""
    return from_unit_vectors(rng.normal(size=(n, 3)))


def write_inputs(folder: Path, rows: int, seed: int) -> tuple[Path, Path, Path]:
    """The truth file, the shuffled predictions file and the one table of both (paired rows)."""
    rng = np.random.default_rng(seed)
    ids = pl.Series("image_id", np.arange(rows)).cast(pl.Utf8) + ".jpg"
    true_lat, true_lon = random_points(rng, rows)
    truth = pl.DataFrame({"image_id": ids, "lat": true_lat, "lon": true_lon})
    # Predictions: some near the truth, some anywhere, a few photos without one.
    near = rng.random(rows) < 0.5
    pred_lat, pred_lon = random_points(rng, rows)
    pred_lat = np.where(near, np.clip(true_lat + rng.normal(scale=0.5, size=rows), -90, 90), pred_lat)
    pred_lon = np.where(near, (true_lon + rng.normal(scale=0.5, size=rows) + 180) % 360 - 180, pred_lon)
    predictions = pl.DataFrame({"image_id": ids, "lat": pred_lat, "lon": pred_lon})
    predictions = predictions.sample(fraction=0.99, shuffle=True, seed=seed)
    paired = truth.rename({"lat": "true_lat", "lon": "true_lon"}).join(
        predictions, on="image_id", how="left", maintain_order="left"
    )
    paths = folder / "truth.parquet", folder / "predictions.parquet", folder / "paired.parquet"
    for frame, path in zip((truth, predictions, paired), paths):
        frame.write_parquet(path)
    return paths


def per_row_geopy_seconds(truth_path: Path, predictions_path: Path, sample: int, distance: str) -> dict[str, float]:
    """Seconds per row of geopy for `distance` over `sample` joined rows, called two ways.

    `published`: as GeoRanker's evaluate.py calls it, a pandas `apply` over the rows of a
    DataFrame, then one count per radius. `bare_loop`: a plain list comprehension over
    tuples, the cheapest way to call geopy per row.
    """
    truth = pl.read_parquet(truth_path).head(sample)
    joined = truth.join(pl.read_parquet(predictions_path), on="image_id", suffix="_pred")
    if distance == "geodesic":
        def one(lat, lon, pred_lat, pred_lon):
            return geodesic((lat, lon), (pred_lat, pred_lon)).km
    else:
        def one(lat, lon, pred_lat, pred_lon):
            return great_circle((lat, lon), (pred_lat, pred_lon), radius=EARTH_RADIUS_KM).km
    frame = joined.rename({"lat": "LAT", "lon": "LON", "lat_pred": "LAT_pred", "lon_pred": "LON_pred"}).to_pandas()
    start = time.perf_counter()
    frame["distance"] = frame.apply(lambda x: one(x["LAT"], x["LON"], x["LAT_pred"], x["LON_pred"]), axis=1)
    shares = [frame[frame["distance"] < radius].shape[0] / frame.shape[0] for radius in (2500, 750, 200, 25, 1)]
    published = (time.perf_counter() - start) / len(frame)
    pairs = list(zip(joined["lat"], joined["lon"], joined["lat_pred"], joined["lon_pred"]))
    start = time.perf_counter()
    distances = [one(*pair) for pair in pairs]
    bare_loop = (time.perf_counter() - start) / len(pairs)
    assert len(distances) == len(pairs) and len(shares) == 5
    return {"published": published, "bare_loop": bare_loop}


def per_row_reverse_geocoder_seconds(truth_path: Path, predictions_path: Path, sample: int) -> float:
    """Seconds per row of OSV-5M's labelling: reverse_geocoder on truth and prediction, text labels."""
    truth = pl.read_parquet(truth_path).head(sample)
    joined = truth.join(pl.read_parquet(predictions_path), on="image_id", suffix="_pred")
    sides = [list(zip(joined["lat"], joined["lon"])), list(zip(joined["lat_pred"], joined["lon_pred"]))]
    reverse_geocoder.search(sides[0][:1], verbose=False)  # its table loads once, as in a long run
    start = time.perf_counter()
    labels = [
        ["_".join([p["name"], p["admin2"], p["admin1"], p["cc"]]) for p in reverse_geocoder.search(side, verbose=False)]
        for side in sides
    ]
    hits = sum(a == b for a, b in zip(*labels))
    assert 0 <= hits <= len(joined)
    return (time.perf_counter() - start) / len(joined)


def timed_evaluation(
    predictions_path: Path, truth_path: Path | None, distance: str, areas: bool = False
) -> tuple[float, int, float]:
    """Seconds, missing count and peak RSS (MB) of one evaluation, run in this (fresh) process.

    No truth path: the predictions file's own true_lat / true_lon are the truth.
    """
    start = time.perf_counter()
    metrics = evaluate_files(predictions_path, truth_path, method=distance, areas=areas).metrics
    seconds = time.perf_counter() - start
    return seconds, metrics["missing"], peak_rss_mb()


def textbook_bootstrap_seconds(distances: np.ndarray, sample_rows: int, sample_resamples: int) -> float:
    """Seconds per row and resample of the textbook bootstrap: draw n rows, recompute every figure."""
    rng = np.random.default_rng(0)
    sample = distances[:sample_rows]
    start = time.perf_counter()
    for _ in range(sample_resamples):
        metrics_from_distances(sample[rng.integers(0, sample.size, sample.size)])
    return (time.perf_counter() - start) / (sample_rows * sample_resamples)


def timed_bootstrap(paired_path: Path, resamples: int) -> dict[str, float]:
    """Seconds of the intervals and of a paired comparison over every photo, and peak memory (fresh process)."""
    evaluation = evaluate_files(paired_path, None, areas=False)
    evaluation_peak = peak_rss_mb()
    start = time.perf_counter()
    figure_intervals(evaluation, resamples)
    intervals_s = time.perf_counter() - start
    import scipy.stats  # noqa: F401  the exact McNemar test's module, a one-time import left out of the timing

    noise = np.random.default_rng(1).uniform(0.5, 1.5, evaluation.truth.height)
    shifted = evaluation.truth.with_columns(evaluation.truth["distance_km"] * noise)
    other = Evaluation(metrics=evaluation.metrics, truth=shifted)
    start = time.perf_counter()
    compare(evaluation, other, resamples)
    compare_s = time.perf_counter() - start
    return {"intervals_s": intervals_s, "compare_s": compare_s, "evaluation_peak_rss_mb": evaluation_peak,
            "peak_rss_mb": peak_rss_mb(), "rss_after_mb": status_mb("VmRSS") or 0.0}


def bootstrap_figures(pool, paired_path: Path, rows: int, resamples: int) -> dict[str, object]:
    ours = pool.apply(timed_bootstrap, (paired_path, resamples))
    distances = evaluate_files(paired_path, None, areas=False).truth["distance_km"].fill_null(np.nan).to_numpy()
    per_row_resample = textbook_bootstrap_seconds(distances, min(rows, 1_000_000), 3)
    textbook = per_row_resample * rows * resamples
    return {
        "resamples": resamples,
        "intervals_s": round(ours["intervals_s"], 3),
        "compare_s": round(ours["compare_s"], 3),
        "textbook_loop_s": round(textbook, 1),
        "speedup": round(textbook / ours["intervals_s"], 1),
        "evaluation_peak_rss_mb": round(ours["evaluation_peak_rss_mb"]),
        "peak_rss_mb": round(ours["peak_rss_mb"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--sample", type=int, default=20_000, help="rows of the geopy loop actually timed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--only-bootstrap", action="store_true", help="time the bootstrap alone")
    args = parser.parse_args()
    figures: dict[str, object] = {"rows": args.rows}
    fresh_processes = multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1)
    with tempfile.TemporaryDirectory() as folder, fresh_processes as pool:
        truth_path, predictions_path, paired_path = write_inputs(Path(folder), args.rows, args.seed)
        figures["bootstrap"] = bootstrap_figures(pool, paired_path, args.rows, args.resamples)
        if args.only_bootstrap:
            print(json.dumps(figures))
            return
        published_s: dict[str, float] = {}
        for distance in ("great-circle", "geodesic"):
            ours, missing, peak_mb = pool.apply(timed_evaluation, (paired_path, None, distance))
            per_row = per_row_geopy_seconds(truth_path, predictions_path, args.sample, distance)
            published, bare_loop = per_row["published"] * args.rows, per_row["bare_loop"] * args.rows
            published_s[distance] = published
            figures[distance] = {
                "ours_s": round(ours, 3),
                "published_script_s": round(published, 1),
                "speedup": round(published / ours, 1),
                "bare_geopy_loop_s": round(bare_loop, 1),
                "speedup_vs_bare_loop": round(bare_loop / ours, 1),
                "peak_rss_mb": round(peak_mb),
                "missing": missing,
            }
        ours, missing, peak_mb = pool.apply(timed_evaluation, (predictions_path, truth_path, "great-circle"))
        figures["two_files"] = {
            "ours_s": round(ours, 3),
            "speedup": round(published_s["great-circle"] / ours, 1),
            "peak_rss_mb": round(peak_mb),
            "missing": missing,
        }
        ours, _, peak_mb = pool.apply(timed_evaluation, (paired_path, None, "great-circle", True))
        baseline = per_row_reverse_geocoder_seconds(truth_path, predictions_path, args.sample) * args.rows
        figures["areas"] = {
            "ours_s": round(ours, 3),
            "area_labels_s": round(ours - figures["great-circle"]["ours_s"], 3),
            "per_row_reverse_geocoder_s": round(baseline, 1),
            "peak_rss_mb": round(peak_mb),
        }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
