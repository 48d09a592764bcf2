"""Geocell clustering speed: ours against the data-preparation guide's HDBSCAN, on the same points.

The points look like real photo locations: the 100K real photo locations shipped in the
`geoclip` package, each spot moved by a kilometre-scale jitter, then photos drawn from
the spots with a heavy tail (most spots hold one photo, a few hold thousands, as
landmarks do), about 36% distinct, rounded to 6 decimals as geotags are.

- ours: collapsing identical coordinates, HDBSCAN on unit vectors (Boruvka MST
  on a KD-tree, photo-weighted condensed tree) with labels as one point per photo,
  and the coarser levels (3 levels), as `geoloc cells build` computes them (files are
  not written). numba's one-off compilation is done on a small warm-up set first and
  not counted.
- the data-preparation guide's method: hdbscan with algorithm='prims_kdtree',
  approx_min_span_tree=True, min_cluster_size=5, min_samples=2 on the distinct
  lat/lon degrees (`pip install -e ".[bench]"` for hdbscan).

Prints one JSON line: {"points", "distinct", "ours_s", "seed_method_s", "speedup", "ours_peak_mb"}, plus
"cells" (level 0), "ours_cpu_s" (CPU seconds of our run, all threads) and "load" (the machine's 1-minute load
average at the end: other work on the machine slows the wall-clock figures); ours_peak_mb is the process's
peak resident memory after our run (points included).

`--method semantic [--preset pigeotto|pigeon]` times PIGEON's semantic cells instead
(`geoloc.cells.semantic`, the installed boundaries, files not written) on the same points:
{"points", "distinct", "boundaries_s" (loading the areas), "semantic_s", "steps" (seconds at each step),
"peak_mb", "cells", "small", "above_max", "crossing_border" (photos whose cell's country is not
the country holding them: 0 is the promise), "load"}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.cells.clustering import collapse_coordinates, hdbscan_distinct
from geoloc.cells.hierarchy import coarser_levels
from geoloc.geo import from_unit_vectors, to_unit_vectors

MIN_CLUSTER_SIZE, MIN_SAMPLES = 5, 2
DISTINCT_SHARE = 0.36


def geoclip_locations() -> tuple[np.ndarray, np.ndarray]:
    """The gallery CSV inside the installed geoclip package, found without importing it (and torch)."""
    spec = importlib.util.find_spec("geoclip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("benchmarks/cells.py needs the geoclip package (pip install -e '.[models]')")
    folder = Path(next(iter(spec.submodule_search_locations)))
    table = pl.read_csv(folder / "model" / "gps_gallery" / "coordinates_100K.csv")
    return table["LAT"].to_numpy(), table["LON"].to_numpy()


def photo_locations(points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`points` photo coordinates: jittered geoclip spots, drawn with a heavy-tailed popularity."""
    rng = np.random.default_rng(seed)
    base_lat, base_lon = geoclip_locations()
    spots = max(1, int(points * DISTINCT_SHARE))
    base = rng.integers(0, len(base_lat), spots)
    vectors = to_unit_vectors(base_lat[base], base_lon[base])
    jitter_km = rng.exponential(3.0, size=spots)
    offset = rng.normal(size=(spots, 3))
    offset -= (offset * vectors).sum(axis=1, keepdims=True) * vectors
    offset /= np.linalg.norm(offset, axis=1, keepdims=True)
    vectors = vectors + offset * (jitter_km / 6371.0088)[:, None]
    spot_lat, spot_lon = from_unit_vectors(vectors)
    popularity = rng.pareto(1.2, size=spots) + 1e-3
    extra = rng.choice(spots, size=points - spots, p=popularity / popularity.sum())
    chosen = rng.permutation(np.concatenate([np.arange(spots), extra]))
    return np.round(spot_lat[chosen], 6), np.round(spot_lon[chosen], 6)


def ours(lat: np.ndarray, lon: np.ndarray) -> tuple[int, int]:
    """Distinct coordinates and finest cells, computed the way `geoloc cells build` does."""
    distinct = collapse_coordinates(lat, lon)
    vectors = distinct.unit_vectors
    finest = hdbscan_distinct(vectors, distinct.photos, MIN_CLUSTER_SIZE, MIN_SAMPLES)
    coarser_levels(vectors, distinct.photos, finest, levels=3)
    return len(distinct), int(finest.max()) + 1


def seed_method(lat: np.ndarray, lon: np.ndarray) -> None:
    import hdbscan

    degrees = np.unique(np.stack([lat, lon], axis=1), axis=0)
    hdbscan.HDBSCAN(min_cluster_size=MIN_CLUSTER_SIZE, min_samples=MIN_SAMPLES, algorithm="prims_kdtree",
                    approx_min_span_tree=True).fit(degrees)


def semantic(lat: np.ndarray, lon: np.ndarray, preset_name: str) -> dict:
    """PIGEON's cells on the points, timed step by step, and checked against the borders."""
    from process_memory import peak_rss_mb

    from geoloc.cells.semantic import PRESETS, semantic_cells
    from geoloc.places.boundaries import admin_areas

    preset = PRESETS[preset_name]
    distinct = collapse_coordinates(lat, lon)
    start = time.perf_counter()
    areas = admin_areas()
    boundaries_s = time.perf_counter() - start
    steps: dict[str, float] = {}
    start = time.perf_counter()
    cells = semantic_cells(areas, distinct.lat, distinct.lon, distinct.photos, preset,
                           say=lambda line: steps.setdefault(line, round(time.perf_counter() - start, 1)))
    semantic_s = time.perf_counter() - start
    peak = peak_rss_mb()
    sizes = np.bincount(cells.labels, weights=distinct.photos)
    located = areas.locate(distinct.lat, distinct.lon)
    holding = np.where(located >= 0, areas.names["country"].to_numpy()[np.maximum(located, 0)], None)
    crossing = (located >= 0) & (holding != cells.names["country"].to_numpy()[cells.labels])
    return {"points": len(lat), "distinct": len(distinct), "preset": preset_name,
            "boundaries_s": round(boundaries_s, 1), "semantic_s": round(semantic_s, 1), "steps": steps,
            "peak_mb": round(peak), "cells": len(sizes), "small": int((sizes < preset.min_photos).sum()),
            "above_max": int((sizes > preset.max_photos).sum()),
            "crossing_border": int(distinct.photos[crossing].sum()), "load": round(os.getloadavg()[0], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=300_000)
    parser.add_argument("--skip-seed-method", action="store_true", help="time ours only (the seed method is O(n^2))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=["hdbscan", "semantic"], default="hdbscan")
    parser.add_argument("--preset", choices=["pigeotto", "pigeon"], default="pigeotto")
    args = parser.parse_args()
    if args.method == "semantic":
        print(json.dumps(semantic(*photo_locations(args.points, args.seed), args.preset)))
        return
    warm_lat, warm_lon = photo_locations(2_000, args.seed + 1)
    ours(warm_lat, warm_lon)
    lat, lon = photo_locations(args.points, args.seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    distinct, cells = ours(lat, lon)
    ours_s, ours_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seed_s = None
    if not args.skip_seed_method:
        start = time.perf_counter()
        seed_method(lat, lon)
        seed_s = time.perf_counter() - start
    print(json.dumps({
        "points": args.points,
        "distinct": distinct,
        "ours_s": round(ours_s, 2),
        "seed_method_s": None if seed_s is None else round(seed_s, 2),
        "speedup": None if seed_s is None else round(seed_s / ours_s, 1),
        "ours_peak_mb": round(peak_mb),
        "cells": cells,
        "ours_cpu_s": round(ours_cpu_s, 1),
        "load": round(os.getloadavg()[0], 1),
    }))


if __name__ == "__main__":
    main()
