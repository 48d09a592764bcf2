"""A small synthetic world for the classifier and light ranker tests: the benchmark's generator, at test size.

Photos at clustered locations around a few dozen towns (so that cells form), embeddings
from `benchmarks/synthetic_world.py`'s generator, written as a catalog, embeddings
folders and cells the way the real stages write them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.embeddings import write_embeddings

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("synthetic_world", ROOT / "benchmarks" / "synthetic_world.py")
synthetic_world = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synthetic_world)


@dataclass
class SmallWorld:
    root: Path
    ids: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    vectors: np.ndarray
    splits: dict[str, slice]

    def folder(self, split: str) -> Path:
        return self.root / f"{split}-embeddings"

    def truth(self, split: str) -> pl.DataFrame:
        part = self.splits[split]
        return pl.DataFrame({"image_id": self.ids[part].tolist(), "lat": self.lat[part], "lon": self.lon[part]})


def make_world(root: Path, photos: int = 3000, queries: int = 600, towns: int = 40, dim: int = 32,
               seed: int = 0) -> SmallWorld:
    """Gallery (catalog + embeddings + cells) and training/test query embeddings under `root`."""
    from geoloc.cells import CellsOptions, build_cells

    rng = np.random.default_rng(seed)
    town_lat, town_lon = rng.uniform(-55, 65, towns), rng.uniform(-180, 180, towns)
    town = rng.integers(0, towns, photos + 2 * queries)
    spread = rng.choice([0.05, 0.3, 1.5], size=len(town))
    lat = np.clip(town_lat[town] + rng.normal(size=len(town)) * spread, -89, 89)
    lon = (town_lon[town] + rng.normal(size=len(town)) * spread + 180) % 360 - 180
    vectors = synthetic_world.world_embeddings(lat, lon, dim, 64, seed)
    ids = np.array([f"p{i:05d}.jpg" for i in range(len(lat))], dtype=object)
    splits = {"gallery": slice(0, photos), "train": slice(photos, photos + queries),
              "test": slice(photos + queries, None)}
    (root / "catalog").mkdir(parents=True)
    pl.DataFrame({"image_id": ids[:photos].tolist(), "uri": ids[:photos].tolist(), "lat": lat[:photos],
                  "lon": lon[:photos], "source": "csv"}).write_parquet(root / "catalog" / "catalog.parquet")
    for split, part in splits.items():
        write_embeddings(root / f"{split}-embeddings", ids[part].tolist(), vectors[part], "synthetic")
    build_cells(root / "catalog", root / "cells", CellsOptions(min_cluster_size=5, levels=3))
    return SmallWorld(root, ids, lat, lon, vectors, splits)
