"""Training PLONK's network on frozen embeddings: Riemannian flow matching on the sphere.

PLONK's objective: for a photo at x1 (a unit vector), a uniform random point x0 and a
noise level gamma = schedule(t), t uniform, the point x_t on the great circle from x0 to x1
a share gamma of the way, and the network asked for that path's velocity there (squared
error, averaged over the three coordinates). Classifier-free guidance needs the network to
know the unconditional case: each photo's embedding is replaced by zeros with probability
`cond_drop`. The loop is `geoloc.fitting`'s (accelerate: one GPU or several).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from geoloc.fitting import FitSettings, fit
from geoloc.plonk.model import PlonkModel, PlonkSettings
from geoloc.plonk.network import NetworkConfig, PlonkNetwork, Schedule


def geodesic_and_velocity(start: torch.Tensor, end: torch.Tensor, gamma: torch.Tensor):
    """Points a share `gamma` (B,) of the way along the great circles from `start` to `end` (B, 3), and the
    path's velocity d/dgamma there."""
    cosine = (start * end).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    angle = torch.arccos(cosine)
    sine = torch.sin(angle).clamp(min=1e-6)
    share = gamma[:, None]
    point = (torch.sin((1 - share) * angle) * start + torch.sin(share * angle) * end) / sine
    velocity = angle * (torch.cos(share * angle) * end - torch.cos((1 - share) * angle) * start) / sine
    return point, velocity


def flow_matching_loss(network: PlonkNetwork, schedule: Schedule, targets: torch.Tensor, embeddings: torch.Tensor,
                       cond_drop: float) -> torch.Tensor:
    """PLONK's Riemannian flow-matching loss of a batch of unit vectors given their photos' embeddings."""
    rows = len(targets)
    gamma = schedule(torch.rand(rows, device=targets.device))
    start = torch.nn.functional.normalize(torch.randn_like(targets), dim=-1)
    point, velocity = geodesic_and_velocity(start, targets, gamma)
    dropped = torch.rand(rows, device=targets.device) < cond_drop
    conditions = torch.where(dropped[:, None], torch.zeros_like(embeddings), embeddings)
    error = network(point, conditions, gamma) - velocity
    return (error * error).sum(dim=-1).mean() / 3


def train_plonk(vectors: np.ndarray, unit_targets: np.ndarray, config: NetworkConfig, settings: PlonkSettings,
                fit_settings: FitSettings, cond_drop: float = 0.1, say: Callable[[str], None] = lambda line: None,
                progress: Callable[[int, int], None] = lambda done, total: None) -> tuple[PlonkModel, list[float]]:
    """A PLONK network trained on (embedding, unit vector) pairs; returns the model and each epoch's mean loss."""
    torch.manual_seed(fit_settings.seed)
    network = PlonkNetwork(config)
    embeddings = torch.as_tensor(vectors, dtype=torch.float32)
    targets = torch.as_tensor(unit_targets, dtype=torch.float32)

    def loss_of(model: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
        device = next(model.parameters()).device
        rows = rows.cpu()
        return flow_matching_loss(model, settings.schedule, targets[rows].to(device), embeddings[rows].to(device),
                                  cond_drop)

    trained, losses = fit(network, len(targets), loss_of, fit_settings, say, progress)
    return PlonkModel("trained", trained.cpu().eval().requires_grad_(False), settings), losses


def train_plonk_folder(catalog_dir: Path, embeddings_dir: Path, out: Path, config: NetworkConfig,
                       fit_settings: FitSettings, cond_drop: float = 0.1,
                       say: Callable[[str], None] = lambda line: None,
                       progress: Callable[[int, int], None] = lambda done, total: None) -> list[float]:
    """`geoloc plonk train`: every embedded catalog photo at its coordinates; the folder `diff-plonk` loads too.

    The folder records the embeddings' backbone (and kind), so that sampling refuses any other.
    """
    import polars as pl

    from geoloc.embeddings import EmbeddingsError, feature_kind, read_embeddings
    from geoloc.geo import to_unit_vectors
    from geoloc.plonk.model import embedding_identity, save_plonk
    from geoloc.tables import read_table

    meta, ids, vectors = read_embeddings(embeddings_dir)
    if not len(ids):
        raise EmbeddingsError(f"{embeddings_dir}: no embedded photos to train on")
    coordinates = pl.DataFrame({"image_id": ids}).join(
        read_table(catalog_dir / "catalog.parquet", columns=["image_id", "lat", "lon"]).with_columns(
            pl.col("image_id").cast(pl.Utf8)), on="image_id", how="left", maintain_order="left")
    strangers = coordinates.filter(pl.col("lat").is_null())["image_id"]
    if len(strangers):
        raise EmbeddingsError(f"{len(strangers)} embedded photo(s) are not in {catalog_dir}, e.g. {strangers[0]!r}: "
                              "were the embeddings made from another catalog?")
    config = NetworkConfig(**{**config.as_json(), "cond_dim": int(meta["dim"])})
    settings = PlonkSettings("riemannian_flow", embedding_identity(meta["backbone"]), Schedule(),
                             feature_kind(meta))
    targets = to_unit_vectors(coordinates["lat"].to_numpy(), coordinates["lon"].to_numpy())
    model, losses = train_plonk(vectors, targets, config, settings, fit_settings, cond_drop, say, progress)
    save_plonk(model, out)
    return losses
