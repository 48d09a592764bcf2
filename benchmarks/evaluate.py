"""Speed of `geoloc evaluate` against the per-row loop of published evaluation scripts.

Writes N random truth rows and N predictions (shuffled, so the id join does real work)
as Parquet, then times the whole evaluation: reading both files, validating them,
joining on ids, distances and figures. The baseline is what published scripts do:
geopy's geodesic called once per row in a Python loop; it is timed on a sample and
extrapolated to N rows (the loop is linear in N), and only its distance loop is
counted, which flatters it. Prints one JSON line:
{"rows", "ours_s", "per_row_geopy_s", "speedup"}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from geopy.distance import geodesic

from geoloc.evaluate import evaluate_files
from geoloc.geo import from_unit_vectors


def random_points(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points uniform on the sphere."""
    return from_unit_vectors(rng.normal(size=(n, 3)))


def write_inputs(folder: Path, rows: int, seed: int) -> tuple[Path, Path]:
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
    truth_path, predictions_path = folder / "truth.parquet", folder / "predictions.parquet"
    truth.write_parquet(truth_path)
    predictions.write_parquet(predictions_path)
    return truth_path, predictions_path


def per_row_geopy_seconds(truth_path: Path, predictions_path: Path, sample: int) -> float:
    """Seconds per row of a geopy geodesic loop over `sample` joined rows."""
    truth = pl.read_parquet(truth_path).head(sample)
    predictions = pl.read_parquet(predictions_path)
    joined = truth.join(predictions, on="image_id", suffix="_pred")
    pairs = list(zip(joined["lat"], joined["lon"], joined["lat_pred"], joined["lon_pred"]))
    start = time.perf_counter()
    distances = [geodesic((lat, lon), (pred_lat, pred_lon)).km for lat, lon, pred_lat, pred_lon in pairs]
    assert len(distances) == len(pairs)
    return (time.perf_counter() - start) / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--sample", type=int, default=20_000, help="rows of the geopy loop actually timed")
    parser.add_argument("--distance", choices=["great-circle", "geodesic"], default="great-circle")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        truth_path, predictions_path = write_inputs(Path(folder), args.rows, args.seed)
        start = time.perf_counter()
        metrics = evaluate_files(predictions_path, truth_path, method=args.distance).metrics
        ours = time.perf_counter() - start
        per_row = per_row_geopy_seconds(truth_path, predictions_path, args.sample)
    baseline = per_row * args.rows
    print(json.dumps({
        "rows": args.rows,
        "distance": args.distance,
        "ours_s": round(ours, 3),
        "per_row_geopy_s": round(baseline, 1),
        "speedup": round(baseline / ours, 1),
        "missing": metrics["missing"],
    }))


if __name__ == "__main__":
    main()
