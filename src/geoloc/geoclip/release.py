"""A GeoCLIP release folder in the `geoclip` package's own format, plus the cached features of its gallery.

`config.json` (model_type `geoclip-geolocation`, format_version 1, sigma, gallery_file,
backbone repo_id and revision: what `GeoCLIP.from_pretrained(folder)` reads), `model.safetensors`
(image_encoder.mlp.*, location_encoder.*, logit_scale), the GPS gallery as a LAT,LON CSV, and
`location_features.safetensors`: the gallery's normalized location features, computed once per
release and checked against the weights and the gallery before use.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from geoloc.errors import InputError
from geoloc.tables import replace_durably, write_table, write_text

MODEL_TYPE = "geoclip-geolocation"
FORMAT_VERSION = 1
GALLERY_FILE = "gps_gallery.csv"
LOCATION_FEATURES = "location_features.safetensors"
GALLERY_SIZE = 100_000
"""GeoCLIP's gallery: 100K MP-16 locations."""
PUBLISHED_BACKBONE = "openai/clip-vit-large-patch14"


class ReleaseError(InputError):
    """A folder is not a GeoCLIP release this code can read."""


@dataclass(frozen=True)
class Release:
    folder: Path
    config: dict
    weights: dict[str, torch.Tensor]
    gallery: np.ndarray
    """(locations, 2) float32 lat, lon, as the package holds its gallery."""

    @property
    def sigmas(self) -> tuple[float, ...]:
        return tuple(float(sigma) for sigma in self.config["sigma"])

    @property
    def backbone(self) -> str:
        """The backbone the release was trained on, as geoloc loads it (a hub id or a folder)."""
        return self.config.get("geoloc", {}).get("backbone") or self.config["backbone"]["repo_id"]


def read_release(folder: Path) -> Release:
    """A release written by `geoloc geoclip train` (or any in the package's format); a clear error otherwise."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ReleaseError(f"{folder}: not a GeoCLIP release (no config.json); make one with `geoloc geoclip train`")
    config = json.loads(config_path.read_text())
    if config.get("model_type") != MODEL_TYPE or config.get("format_version") != FORMAT_VERSION:
        raise ReleaseError(f"{folder}: config.json is not a {MODEL_TYPE} release of format_version {FORMAT_VERSION}")
    gallery_name = str(config.get("gallery_file", ""))
    if Path(gallery_name).name != gallery_name or not (folder / gallery_name).is_file():
        raise ReleaseError(f"{folder}: config.json's gallery_file {gallery_name!r} is not a file of the release")
    table = pl.read_csv(folder / gallery_name, schema_overrides={"LAT": pl.Float64, "LON": pl.Float64})
    return Release(folder, config, load_file(str(folder / "model.safetensors")),
                   table.select("LAT", "LON").to_numpy().astype(np.float32))


def backbone_reference(name: str) -> dict[str, str]:
    """The hub repo and revision the package downloads for a backbone (a hub id, or a folder of the hub's cache)."""
    from huggingface_hub import constants

    path = Path(name)
    if path.is_dir():
        parts = path.resolve().parts
        if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
            return {"repo_id": parts[-3][len("models--"):].replace("--", "/"), "revision": parts[-1]}
        return {"repo_id": name, "revision": "main"}
    ref = Path(constants.HF_HUB_CACHE) / f"models--{name.replace('/', '--')}" / "refs" / "main"
    return {"repo_id": name, "revision": ref.read_text().strip() if ref.is_file() else "main"}


def sample_gallery(lat: np.ndarray, lon: np.ndarray, size: int, seed: int = 0, cell_degrees: float = 1.0) -> np.ndarray:
    """Up to `size` distinct (lat, lon) of the training photos, dense and sparse regions both represented.

    The sphere is cut into cells of about `cell_degrees` a side (longitude steps widen toward
    the poles so cells keep their area); cells are served in turns, one random location of
    each occupied cell per turn, so every region has a location before any has two, and
    dense regions fill the rest.
    """
    points = pl.DataFrame({"lat": np.asarray(lat, np.float64), "lon": np.asarray(lon, np.float64)})
    points = points.unique(maintain_order=True)
    if len(points) <= size:
        return points.sort("lat", "lon").to_numpy()
    band = np.floor((points["lat"].to_numpy() + 90.0) / cell_degrees)
    centre = np.radians(np.minimum(band * cell_degrees - 90.0 + cell_degrees / 2, 90.0))
    columns = np.maximum(1, np.round(360.0 / cell_degrees * np.cos(centre)))
    column = np.floor((points["lon"].to_numpy() + 180.0) / 360.0 * columns) % columns
    chosen = (points.with_columns(cell=pl.Series(band * 100_000 + column), draw=pl.Series(
        np.random.default_rng(seed).random(len(points))))
        .with_columns(turn=pl.col("draw").rank("ordinal").over("cell"))
        .sort("turn", "draw").head(size))
    return chosen.select("lat", "lon").sort("lat", "lon").to_numpy()


def read_gallery_file(path: Path) -> np.ndarray:
    """A gallery given by the user: CSV or Parquet with LAT, LON (GeoCLIP's) or lat, lon columns."""
    from geoloc.geo import coordinate_status
    from geoloc.tables import read_table, select_layout

    table = select_layout(read_table(path), path, [{"LAT": "lat", "LON": "lon"}, {"lat": "lat", "lon": "lon"}])
    coordinates = table.select(pl.col("lat", "lon").cast(pl.Float64)).to_numpy()
    if not len(coordinates) or (coordinate_status(coordinates[:, 0], coordinates[:, 1]) == 1).any():
        raise ReleaseError(f"{path}: a gallery needs at least one location, every one a valid lat, lon")
    return coordinates


def gallery_features(model: torch.nn.Module, gallery: np.ndarray, batch_size: int = 4096) -> torch.Tensor:
    """Normalized location features of every gallery location, in batches on the model's device; on the CPU."""
    locations = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))
    device = next(model.parameters()).device
    with torch.inference_mode():
        parts = [model(locations[start:start + batch_size].to(device)).cpu()
                 for start in range(0, len(locations), batch_size)]
    return torch.nn.functional.normalize(torch.cat(parts), dim=1).contiguous()


def cached_gallery_features(cache: Path, weights_key: bytes, location_encoder: torch.nn.Module,
                            gallery: np.ndarray, batch_size: int = 4096) -> torch.Tensor:
    """The gallery's location features from `cache` when it was made from these weights and this gallery; else
    computed and cached (a cache that cannot be written is skipped)."""
    key = hashlib.sha256(weights_key + np.ascontiguousarray(gallery, dtype=np.float32).tobytes()).hexdigest()
    if cache.is_file():
        with safe_open(str(cache), framework="pt") as handle:
            if (handle.metadata() or {}).get("key") == key:
                return handle.get_tensor("features")
    features = gallery_features(location_encoder, gallery, batch_size)
    if os.access(cache.parent if cache.parent.exists() else cache.parent.parent, os.W_OK):
        replace_durably(cache, lambda temporary: save_file({"features": features}, str(temporary),
                                                           metadata={"key": key}))
    return features


def weights_key(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


def write_release(out: Path, weights: dict[str, torch.Tensor], sigmas: tuple[float, ...], gallery: np.ndarray,
                  backbone: str, details: dict) -> None:
    """The release files; config.json last, so a folder with one is whole."""
    replace_durably(out / "model.safetensors", lambda temporary: save_file(weights, str(temporary)))
    coordinates = np.asarray(gallery, dtype=np.float32)  # what the package and geoloc hold, written exactly
    write_table(pl.DataFrame({"LAT": coordinates[:, 0], "LON": coordinates[:, 1]}), out / GALLERY_FILE)
    config = {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION, "sigma": list(sigmas),
              "gallery_file": GALLERY_FILE, "backbone": backbone_reference(backbone),
              "geoloc": {"backbone": backbone, **details}}
    write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
