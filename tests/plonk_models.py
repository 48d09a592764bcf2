"""Tiny PLONK checkpoints with random weights, written as geoloc writes them, for the PLONK tests."""

from __future__ import annotations

from pathlib import Path

import torch

from geoloc.plonk.model import PlonkModel, PlonkSettings, save_plonk
from geoloc.plonk.network import NetworkConfig, PlonkNetwork


def write_tiny_plonk(folder: Path, cond_dim: int, seed: int) -> Path:
    """A one-block network reading raw plonk-dinov2 embeddings; every weight random (none left at zero)."""
    torch.manual_seed(seed)
    network = PlonkNetwork(NetworkConfig(dim=16, depth=1, expansion=2, cond_dim=cond_dim))
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0.0, 0.05)
    save_plonk(PlonkModel("tiny", network, PlonkSettings("riemannian_flow", "plonk-dinov2", feature_kind="raw")),
               folder)
    return folder
