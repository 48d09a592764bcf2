"""Two methods on an IM2GPS3K-sized benchmark: is the better-looking one really better?

Writes into FOLDER a truth file of 2,997 simulated photos (`truth.csv`) and two methods'
predictions over them: `baseline.csv`, and `candidate.csv`, whose error on each photo is
the baseline's scaled by a random factor a little below 1 on average, as a slightly
improved model would err. Then compare them:

    python examples/two_methods.py comparison
    geoloc evaluate comparison/baseline.csv comparison/candidate.csv --truth comparison/truth.csv

docs/evaluation.md shows the output; tests/test_evaluate_layouts.py checks that it still does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.geo import EARTH_RADIUS_KM, from_unit_vectors, to_unit_vectors

PHOTOS = 2997


def points_at(lat: np.ndarray, lon: np.ndarray, distance_km: np.ndarray, rng: np.random.Generator):
    """The points `distance_km` away from (lat, lon) in random directions, along great circles."""
    start = to_unit_vectors(lat, lon)
    direction = rng.normal(size=start.shape)
    direction -= np.sum(direction * start, axis=1, keepdims=True) * start  # tangent at the start
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    angle = (distance_km / EARTH_RADIUS_KM)[:, None]
    return from_unit_vectors(np.cos(angle) * start + np.sin(angle) * direction)


def write_benchmark(folder: Path, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    lat, lon = from_unit_vectors(rng.normal(size=(PHOTOS, 3)))
    ids = [f"photo_{i:04d}.jpg" for i in range(PHOTOS)]
    baseline_km = np.minimum(rng.lognormal(np.log(400), 2.2, PHOTOS), 19_000)
    candidate_km = np.minimum(baseline_km * rng.lognormal(-0.1, 0.5, PHOTOS), 19_000)
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"image_id": ids, "lat": lat, "lon": lon}).write_csv(folder / "truth.csv")
    for name, error_km in (("baseline", baseline_km), ("candidate", candidate_km)):
        pred_lat, pred_lon = points_at(lat, lon, error_km, rng)
        pl.DataFrame({"image_id": ids, "lat": pred_lat, "lon": pred_lon}).write_csv(folder / f"{name}.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    write_benchmark(parser.parse_args().folder)


if __name__ == "__main__":
    main()
