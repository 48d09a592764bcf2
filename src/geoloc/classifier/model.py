"""The hierarchical geocell classifier: a small network over frozen image embeddings, one head per cell level.

Why a hierarchy: a fine cell is hard to tell from its neighbours, its country is not;
at prediction time a fine cell's log-probability is added to its ancestors' (top-down),
so a confident coarse head vetoes fine cells on the wrong continent.
Why haversine label smoothing: being off by one cell next door should cost less than
being off by an ocean; each photo's target spreads over its true cell's nearest cells
in proportion to exp(-distance / tau), tau per level. PIGEON's own form is an option
(`photo_smoothing_targets`): the distances run from the photo's own location to every
cell centroid, target exp(-(d_i - min_j d_j) / tau), unnormalized as in its code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from geoloc.errors import InputError
from geoloc.geo import EARTH_RADIUS_KM, chord_to_km, to_unit_vectors
from geoloc.tables import replace_durably, write_text

CONFIG_FILE = "classifier.json"
WEIGHTS_FILE = "model.safetensors"
CELLS_FILE = "cells.safetensors"
MEMORY_FILE = "memory.safetensors"
NAMES_FILE = "cell_names.json"
"""The place each finest cell names (semantic cells), when the cells have names."""
FORMAT = "geoloc-classifier/1"


class ClassifierError(InputError):
    """A classifier folder is missing, incomplete, or does not match the embeddings given to it."""


@dataclass
class Smoothing:
    """Sparse soft targets of one level: for each cell, its `k` nearest cells and their target mass."""

    neighbours: torch.Tensor
    """(cells, k) int64, column 0 the cell itself."""
    mass: torch.Tensor
    """(cells, k) float32, rows summing to 1."""


def haversine_smoothing(centroids: NDArray[np.float64], tau_km: float, k: int = 32) -> Smoothing:
    """Each cell's target mass over its k nearest cells by great-circle distance, proportional to exp(-d / tau)."""
    k = max(1, min(k, len(centroids)))
    vectors = to_unit_vectors(centroids[:, 0], centroids[:, 1]).reshape(-1, 3)
    chord, neighbours = cKDTree(vectors).query(vectors, k=k)
    chord, neighbours = chord.reshape(len(vectors), k), neighbours.reshape(len(vectors), k)
    # Each cell's own column first, even where two centroids coincide and the tree lists the other first.
    own = np.arange(len(vectors))
    lacking = ~(neighbours == own[:, None]).any(axis=1)
    neighbours[lacking, -1] = own[lacking]
    order = np.argsort(neighbours != own[:, None], axis=1, kind="stable")
    neighbours, chord = np.take_along_axis(neighbours, order, 1), np.take_along_axis(chord, order, 1)
    chord[:, 0] = 0.0
    weights = np.exp(-chord_to_km(chord) / max(tau_km, 1e-6))
    mass = weights / weights.sum(axis=1, keepdims=True)
    return Smoothing(torch.from_numpy(neighbours.astype(np.int64)), torch.from_numpy(mass.astype(np.float32)))


def default_tau_km(centroids: NDArray[np.float64], scale: float = 0.5) -> float:
    """`scale` x the median distance from a cell's centroid to the nearest other one: about a cell's radius."""
    if len(centroids) < 2:
        return 1.0
    vectors = to_unit_vectors(centroids[:, 0], centroids[:, 1]).reshape(-1, 3)
    chord, _ = cKDTree(vectors).query(vectors, k=2)
    return float(max(scale * np.median(chord_to_km(chord[:, 1])), 1e-3))


@dataclass(frozen=True)
class ClassifierConfig:
    dim: int
    cells_per_level: list[int]
    tau_km: list[float]
    hidden: int = 512
    dropout: float = 0.1
    backbone: str | None = None
    """The backbone of the embeddings it was trained on: queries must come from the same one."""
    photo_smoothing: bool = False
    """True: trained with PIGEON's per-photo haversine smoothing (tau_km[0] for every level)."""
    format: str = FORMAT


class HierarchicalClassifier(torch.nn.Module):
    """Embedding -> shared trunk -> one linear head per level; returns the logits of every level, finest first."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = torch.nn.Sequential(
            torch.nn.Linear(config.dim, config.hidden), torch.nn.GELU(), torch.nn.Dropout(config.dropout),
            torch.nn.Linear(config.hidden, config.hidden), torch.nn.GELU(), torch.nn.Dropout(config.dropout),
        )
        self.heads = torch.nn.ModuleList(torch.nn.Linear(config.hidden, cells) for cells in config.cells_per_level)

    def forward(self, embeddings: torch.Tensor) -> list[torch.Tensor]:
        hidden = self.trunk(embeddings)
        return [head(hidden) for head in self.heads]


def smoothed_loss(logits: list[torch.Tensor], labels: torch.Tensor, smoothing: list[Smoothing]) -> torch.Tensor:
    """Cross-entropy against the haversine-smoothed targets, summed over levels (labels: (batch, levels))."""
    total = logits[0].new_zeros(())
    for level, (level_logits, level_smoothing) in enumerate(zip(logits, smoothing)):
        cells = labels[:, level]
        log_probabilities = torch.log_softmax(level_logits, dim=-1)
        neighbours = level_smoothing.neighbours.to(cells.device)[cells]
        mass = level_smoothing.mass.to(cells.device)[cells]
        total = total - (mass * torch.gather(log_probabilities, 1, neighbours)).sum(dim=-1).mean()
    return total


def photo_smoothing_targets(coordinates: torch.Tensor, centroids: torch.Tensor, tau_km: float) -> torch.Tensor:
    """PIGEON's haversine-smoothed labels (batch, cells): exp(-(d_i - min_j d_j) / tau), d_i the great-circle km
    from each photo's (lat, lon) to cell i's centroid."""
    photos, cells = (to_unit_tensor(points) for points in (coordinates, centroids))
    chord = torch.cdist(photos, cells).clamp(max=2.0)
    km = 2.0 * EARTH_RADIUS_KM * torch.asin(chord / 2.0)
    return torch.exp(-(km - km.min(dim=1, keepdim=True).values) / tau_km)


def to_unit_tensor(lat_lon: torch.Tensor) -> torch.Tensor:
    """(n, 2) degrees -> (n, 3) unit vectors, in the tensor's dtype and device."""
    lat, lon = torch.deg2rad(lat_lon[:, 0]), torch.deg2rad(lat_lon[:, 1])
    return torch.stack([torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)], dim=1)


def photo_smoothed_loss(logits: list[torch.Tensor], coordinates: torch.Tensor, centroids: list[torch.Tensor],
                        tau_km: float) -> torch.Tensor:
    """Cross-entropy against PIGEON's per-photo smoothed labels, summed over levels."""
    total = logits[0].new_zeros(())
    for level_logits, level_centroids in zip(logits, centroids):
        targets = photo_smoothing_targets(coordinates, level_centroids, tau_km).to(level_logits.dtype)
        total = total - (targets * torch.log_softmax(level_logits, dim=-1)).sum(dim=-1).mean()
    return total


def top_down_scores(logits: list[torch.Tensor], ancestors: torch.Tensor) -> torch.Tensor:
    """Log-score of every finest cell: its own log-probability plus each ancestor's (ancestors: (cells_0, levels))."""
    scores = torch.log_softmax(logits[0], dim=-1)
    for level in range(1, len(logits)):
        scores = scores + torch.log_softmax(logits[level], dim=-1)[:, ancestors[:, level]]
    return scores


@dataclass
class CellTable:
    """What prediction needs of the hierarchy: centroids per level and each finest cell's ancestors."""

    centroids: list[NDArray[np.float64]]
    """Per level, (cells, 2) lat/lon of each cell's centroid."""
    ancestors: NDArray[np.int64]
    """(finest cells, levels): column l the level-l cell containing each finest cell (column 0 itself)."""
    names: list[str] | None = None
    """The place each finest cell names ("admin2, admin1, country"), for semantic cells."""


@dataclass
class Memory:
    """The training photos, for placing a candidate among the photos of its cell that look most like the query."""

    vectors: NDArray[np.float32]
    coordinates: NDArray[np.float64]
    cells: NDArray[np.int64]


def save_classifier(folder: Path, model: HierarchicalClassifier, cells: CellTable, memory: Memory) -> None:
    """Weights, hierarchy and memory as safetensors, the config as JSON (written last: its presence means done)."""
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    for name, save, tensors in (
        (WEIGHTS_FILE, save_file, state),
        # safetensors writes raw buffers: every array must be C-contiguous (polars hands out Fortran order).
        (CELLS_FILE, save_numpy, {"ancestors": np.ascontiguousarray(cells.ancestors, dtype=np.int64),
                                  **{f"centroids_{level}": np.ascontiguousarray(centroids, dtype=np.float64)
                                     for level, centroids in enumerate(cells.centroids)}}),
        (MEMORY_FILE, save_numpy, {"vectors": np.ascontiguousarray(memory.vectors, dtype=np.float16),
                                   "coordinates": np.ascontiguousarray(memory.coordinates, dtype=np.float64),
                                   "cells": np.ascontiguousarray(memory.cells, dtype=np.int64)}),
    ):
        replace_durably(folder / name, lambda temporary: save(tensors, str(temporary)))  # noqa: B023 - called at once
    if cells.names is not None:
        write_text(folder / NAMES_FILE, json.dumps(cells.names, ensure_ascii=False) + "\n")
    write_text(folder / CONFIG_FILE, json.dumps(asdict(model.config), indent=2) + "\n")


def load_classifier(folder: Path) -> tuple[HierarchicalClassifier, CellTable, Memory]:
    """The model (in eval mode), its hierarchy and memory from a folder `save_classifier` wrote."""
    from safetensors.numpy import load_file as load_numpy
    from safetensors.torch import load_file

    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE, CELLS_FILE, MEMORY_FILE) if not (folder / name).is_file()]
    if missing:
        raise ClassifierError(f"{folder}: not a classifier folder (missing {', '.join(missing)}); "
                              "train one with `geoloc classifier train`")
    values = json.loads((folder / CONFIG_FILE).read_text())
    if values.get("format") != FORMAT:
        raise ClassifierError(f"{folder}: unknown classifier format {values.get('format')!r}; expected {FORMAT}")
    model = HierarchicalClassifier(ClassifierConfig(**values))
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    model.eval()
    cells = load_numpy(str(folder / CELLS_FILE))
    levels = len(model.config.cells_per_level)
    names = json.loads((folder / NAMES_FILE).read_text()) if (folder / NAMES_FILE).is_file() else None
    table = CellTable([cells[f"centroids_{level}"] for level in range(levels)], cells["ancestors"], names)
    memory = load_numpy(str(folder / MEMORY_FILE))
    return model, table, Memory(memory["vectors"].astype(np.float32), memory["coordinates"], memory["cells"])
