"""The hierarchical geocell classifier: train over frozen embeddings and the cells of `geoloc cells build`,
predict the top-k cells of new photos as candidates (source=classifier).

Files read: the cells folder (`hierarchical_cluster_centroids.parquet`,
`hierarchical_clustered_coords.parquet`, and what `CellIndex` loads), an embeddings folder
(`geoloc embed`), the catalog the embeddings were made from (coordinates by image_id).
Files written: `classifier.json`, `model.safetensors`, `cells.safetensors`, `memory.safetensors`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from numpy.typing import NDArray

from geoloc.candidates import CANDIDATE_SCHEMA
from geoloc.classifier.model import (
    CellTable,
    ClassifierConfig,
    ClassifierError,
    HierarchicalClassifier,
    Memory,
    default_tau_km,
    haversine_smoothing,
    load_classifier,
    photo_smoothed_loss,
    save_classifier,
    smoothed_loss,
    top_down_scores,
)
from geoloc.fitting import FitSettings, fit
from geoloc.geo import from_unit_vectors, to_unit_vectors

__all__ = [
    "CellTable", "ClassifierError", "ClassifierSettings", "HierarchicalClassifier", "Memory", "classifier_candidates",
    "fit_classifier", "load_classifier", "predict_cells", "read_cell_table", "save_classifier", "train_classifier",
]


@dataclass(frozen=True)
class ClassifierSettings:
    hidden: int = 512
    dropout: float = 0.1
    tau_km: tuple[float, ...] | None = None
    """Smoothing distance per level, finest first; None: half the median nearest-centroid distance of each level."""
    smoothing_neighbours: int = 32
    label_smoothing_km: float | None = None
    """PIGEON's per-photo haversine smoothing with this tau (75 km for PIGEON, 65 for PIGEOTTO) instead of the
    per-cell one; None: the per-cell smoothing with `tau_km`."""
    fit: FitSettings = field(default_factory=lambda: FitSettings(epochs=8, batch_size=512, learning_rate=2e-3))


def read_cell_table(cells_dir: Path) -> CellTable:
    """Centroids per level and each finest cell's ancestors, from a `geoloc cells build` folder."""
    stems = ("hierarchical_cluster_centroids", "hierarchical_clustered_coords")
    paths = [cells_dir / f"{stem}.parquet" for stem in stems]
    for path in paths:
        if not path.is_file():
            raise ClassifierError(f"{path}: no such file (is {cells_dir} the output of `geoloc cells build`?)")
    centroid_rows = pl.read_parquet(paths[0])
    photos = pl.scan_parquet(paths[1]).select(pl.col(r"^cluster_\d+$")).collect()  # one row per photo: no paths
    columns = sorted(photos.columns, key=lambda c: int(c.split("_")[1]))
    if not columns:
        raise ClassifierError(f"{paths[1]}: no cluster_0 ... columns")
    links = photos.filter(pl.col("cluster_0") >= 0).select(columns).unique("cluster_0").sort("cluster_0")
    if links.height == 0:
        raise ClassifierError(f"{cells_dir}: no cells (every photo is noise); nothing to classify into")
    if links["cluster_0"].to_list() != list(range(links.height)):
        raise ClassifierError(f"{paths[1]}: finest cell ids are not 0..N-1 without gaps")
    centroids = []
    for column in columns:
        level = centroid_rows.filter(pl.col(column).is_not_null()).sort(column)
        if level[column].to_list() != list(range(level.height)):
            raise ClassifierError(f"{paths[0]}: the {column} cells are not 0..N-1 without gaps")
        centroids.append(level.select("lat", "lon").to_numpy().astype(np.float64))
    return CellTable(centroids, links.to_numpy().astype(np.int64), _cell_names(cells_dir, len(centroids[0])))


def _cell_names(cells_dir: Path, cells: int) -> list[str] | None:
    """Per finest cell, its place as `admin2, admin1, country` (repeats dropped), from a semantic build's
    cells.parquet; None for cells without names."""
    path = cells_dir / "cells.parquet"
    if not path.is_file():
        return None
    table = pl.read_parquet(path, columns=["cell", "country", "admin1", "admin2"]).sort("cell")
    if table["cell"].to_list() != list(range(cells)):
        raise ClassifierError(f"{path}: its cells are not the {cells} cells of the cluster tables")
    rows = table.select("admin2", "admin1", "country").rows()  # one row per cell: thousands, not millions
    return [", ".join(dict.fromkeys(part for part in row if part)) for row in rows]


def fit_classifier(
    vectors: NDArray[np.float32],
    labels: NDArray[np.int64],
    table: CellTable,
    settings: ClassifierSettings = ClassifierSettings(),
    backbone: str | None = None,
    say: Callable[[str], None] = lambda line: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    coordinates: NDArray[np.float64] | None = None,
) -> HierarchicalClassifier:
    """Train on embeddings (rows, dim) and their cells at every level (rows, levels); PIGEON's smoothing
    (`settings.label_smoothing_km`) also needs each row's (lat, lon) `coordinates`."""
    levels = len(table.centroids)
    if labels.shape != (len(vectors), levels):
        raise ClassifierError(f"expected labels of shape ({len(vectors)}, {levels}), got {labels.shape}")
    photo_smoothing = settings.label_smoothing_km is not None
    if photo_smoothing and (coordinates is None or coordinates.shape != (len(vectors), 2)):
        raise ClassifierError("--label-smoothing-km needs the (lat, lon) of every training photo")
    if photo_smoothing:
        taus = [float(settings.label_smoothing_km)] * levels
    else:
        taus = list(settings.tau_km) if settings.tau_km else [default_tau_km(c) for c in table.centroids]
    if len(taus) != levels:
        raise ClassifierError(f"{len(taus)} smoothing distance(s) given for {levels} levels")
    say(("PIGEON's per-photo " if photo_smoothing else "") + "label smoothing tau per level (km): "
        + ", ".join(f"{tau:.0f}" for tau in taus))
    config = ClassifierConfig(dim=vectors.shape[1], cells_per_level=[len(c) for c in table.centroids], tau_km=taus,
                              hidden=settings.hidden, dropout=settings.dropout, backbone=backbone,
                              photo_smoothing=photo_smoothing)
    torch.manual_seed(settings.fit.seed)
    model = HierarchicalClassifier(config)
    inputs, targets = torch.from_numpy(np.ascontiguousarray(vectors, np.float32)), torch.from_numpy(labels)
    if photo_smoothing:
        places = torch.from_numpy(np.ascontiguousarray(coordinates, np.float32))
        centroids = [torch.from_numpy(np.ascontiguousarray(c, np.float32)) for c in table.centroids]

        def loss_of(network: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
            device, rows = _device(network), rows.cpu()
            return photo_smoothed_loss(network(inputs[rows].to(device)), places[rows].to(device),
                                       [c.to(device) for c in centroids], taus[0])
    else:
        smoothing = [haversine_smoothing(c, tau, settings.smoothing_neighbours)
                     for c, tau in zip(table.centroids, taus)]

        def loss_of(network: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
            device, rows = _device(network), rows.cpu()
            return smoothed_loss(network(inputs[rows].to(device)), targets[rows].to(device), smoothing)

    model, _ = fit(model, len(vectors), loss_of, settings.fit, say, progress)
    return model


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_classifier(
    cells_dir: Path,
    embeddings_dir: Path,
    catalog_dir: Path,
    out: Path,
    settings: ClassifierSettings = ClassifierSettings(),
    say: Callable[[str], None] = lambda line: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> int:
    """`geoloc classifier train`: label every embedded catalog photo with its cells, train, save; returns the rows."""
    from geoloc.cells import CellIndex
    from geoloc.embeddings import read_embeddings
    from geoloc.tables import read_table

    table = read_cell_table(cells_dir)
    meta, ids, vectors = read_embeddings(embeddings_dir)
    if len(ids) == 0:
        raise ClassifierError(f"{embeddings_dir}: no embedded photos to train on")
    catalog = read_table(catalog_dir / "catalog.parquet", columns=["image_id", "lat", "lon"]).with_columns(
        pl.col("image_id").cast(pl.Utf8))
    rows = pl.DataFrame({"image_id": ids}).join(catalog, on="image_id", how="left", maintain_order="left")
    unmatched = rows.filter(pl.col("lat").is_null())["image_id"]
    if len(unmatched):
        raise ClassifierError(f"{len(unmatched)} embedded photo(s) are not in {catalog_dir}, e.g. {unmatched[0]!r}: "
                              "were the embeddings made from another catalog?")
    coordinates = rows.select("lat", "lon").to_numpy()
    labels = CellIndex.load(cells_dir).assign(coordinates[:, 0], coordinates[:, 1])
    if labels.shape[1] != len(table.centroids):
        raise ClassifierError(f"{cells_dir}: CellIndex has {labels.shape[1]} levels, the tables "
                              f"{len(table.centroids)}")
    usable = (labels >= 0).all(axis=1)
    if not usable.any():
        raise ClassifierError(f"{cells_dir}: no training photo falls in a cell")
    if not usable.all():
        say(f"{int((~usable).sum()):,} photo(s) in no cell, left out")
    model = fit_classifier(vectors[usable], labels[usable], table, settings, meta.get("backbone"), say, progress,
                           coordinates[usable])
    save_classifier(out, model, table, Memory(vectors[usable], coordinates[usable], labels[usable, 0]))
    return int(usable.sum())


@torch.no_grad()
def predict_cells(
    model: HierarchicalClassifier,
    table: CellTable,
    memory: Memory,
    vectors: NDArray[np.float32],
    top_k: int = 5,
    nearest: int = 5,
    search: int = 256,
    batch_size: int = 4096,
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Finest cells (queries, k), their top-down probabilities, and a location for each.

    The location is the spherical mean of the `nearest` training photos of that cell most
    similar to the query (found among its `search` most similar training photos overall),
    or the cell's centroid when none of them is in the cell (nearest=0: always the centroid).
    """
    import faiss

    top_k = min(top_k, len(table.centroids[0]))
    ancestors = torch.from_numpy(table.ancestors)
    index = faiss.IndexFlatIP(memory.vectors.shape[1])
    index.add(np.ascontiguousarray(memory.vectors, dtype=np.float32))
    memory_xyz = to_unit_vectors(memory.coordinates[:, 0], memory.coordinates[:, 1])
    centroid_xyz = to_unit_vectors(table.centroids[0][:, 0], table.centroids[0][:, 1])
    cells, scores, xyz = [], [], []
    for start in range(0, len(vectors), batch_size):
        chunk = np.ascontiguousarray(vectors[start:start + batch_size], dtype=np.float32)
        log_scores = top_down_scores(model(torch.tensor(chunk)), ancestors)
        best_scores, best = torch.topk(log_scores, top_k, dim=1)
        best = best.numpy()
        place = centroid_xyz[best]
        if nearest > 0 and len(memory.cells):
            _, neighbours = index.search(chunk, min(search, len(memory.cells)))
            found = neighbours >= 0
            match = (memory.cells[neighbours][:, None, :] == best[:, :, None]) & found[:, None, :]
            use = match & (np.cumsum(match, axis=2) <= nearest)
            sums = np.einsum("qkm,qmc->qkc", use.astype(np.float64), memory_xyz[neighbours])
            place = np.where(use.any(axis=2)[..., None], sums, place)
        cells.append(best)
        scores.append(best_scores.exp().double().numpy())
        xyz.append(place)
    if not cells:
        empty = np.empty((0, top_k))
        return empty.astype(np.int64), empty, empty, empty
    lat, lon = from_unit_vectors(np.concatenate(xyz))
    return np.concatenate(cells), np.concatenate(scores), lat, lon


def classifier_candidates(
    query_ids: pl.Series | list[str],
    vectors: NDArray[np.float32],
    model_dir: Path,
    top_k: int = 5,
    nearest: int = 5,
    loaded: tuple[HierarchicalClassifier, CellTable, Memory] | None = None,
) -> pl.DataFrame:
    """Candidates (source=classifier) for each query: its top-k cells, best first, score = top-down probability.

    `loaded`: the model as `load_classifier(model_dir)` gives it, so a process answering many
    batches reads it once."""
    model, table, memory = loaded or load_classifier(model_dir)
    if vectors.ndim != 2 or vectors.shape[1] != model.config.dim:
        raise ClassifierError(f"{model_dir}: the model takes {model.config.dim}-d embeddings, got shape "
                              f"{vectors.shape}; were the queries embedded with another backbone "
                              f"({model.config.backbone})?")
    cells, scores, lat, lon = predict_cells(model, table, memory, vectors, top_k, nearest)
    queries, k = scores.shape
    names = np.asarray(table.names, dtype=object)[cells.ravel()] if table.names else [None] * (queries * k)
    return pl.DataFrame({
        "query_id": pl.Series(np.repeat(np.asarray(list(query_ids), dtype=object), k), dtype=pl.Utf8),
        "source": "classifier",
        "rank": np.tile(np.arange(k, dtype=np.int32), queries),
        "lat": lat.ravel(),
        "lon": lon.ravel(),
        "score": scores.ravel(),
        "text": pl.Series(names, dtype=pl.Utf8),  # the place a semantic cell names
        "ref_uri": pl.Series([None] * (queries * k), dtype=pl.Utf8),
    }, schema=CANDIDATE_SCHEMA)
