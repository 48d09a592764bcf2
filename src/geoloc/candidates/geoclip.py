"""GeoCLIP as a predictor and a candidate generator (source=geoclip).

The trained heads (image MLP, location encoder, logit scale) and the 100K-point GPS
gallery ship inside the `geoclip` package, or come from a release (`geoloc geoclip
train`); the CLIP ViT-L/14 backbone is ours to load (hub id or local folder, see
geoloc.encode). The math is the package's: softmax over
the whole gallery of exp(logit_scale) times the cosine between the image's MLP
features and each location's features. What differs is the work: the package encodes
all 100K gallery locations again for every photo; here they are encoded once, in
batches, cached on disk, and photos are scored in batches.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl
import torch

from geoloc.encode.backbone import Backbone
from geoloc.errors import InputError
from geoloc.geo import great_circle_km
from geoloc.geoclip.model import GEOCLIP_SIGMAS, GeoClipModel, published_state
from geoloc.geoclip.release import LOCATION_FEATURES, cached_gallery_features, read_release, weights_key
from geoloc.user_cache import user_cache_folder

GEOCLIP_IMAGE_DIM = 768
"""GeoCLIP's MLP reads CLIP ViT-L/14 projections: a backbone must produce 768 features."""
PUBLISHED_BACKBONE = "openai/clip-vit-large-patch14"
"""The CLIP GeoCLIP's published heads were trained on."""
CONFIDENCE_MASS = 0.68
"""The share of the model's belief that the confidence circle holds (one sigma's worth)."""


@dataclass(frozen=True)
class GeoClipGuesses:
    """For a batch of photos: top-k (lat, lon) (photos, k, 2), probabilities (photos, k), radius in km."""

    coordinates: np.ndarray
    probabilities: np.ndarray
    radius_km: np.ndarray


def geoclip_backbone(backbone: str | None, release: Path | None) -> str:
    """The backbone to load: the one named, else the release's, else the published one."""
    if backbone is not None:
        return backbone
    return read_release(release).backbone if release is not None else PUBLISHED_BACKBONE


def _package_file(*parts: str) -> Path:
    return Path(str(resources.files("geoclip").joinpath("model", *parts)))


def geoclip_gallery() -> np.ndarray:
    """The package's 100K GPS gallery (lat, lon), float32 as the package holds it."""
    table = pl.read_csv(_package_file("gps_gallery", "coordinates_100K.csv"))
    return table.select("LAT", "LON").to_numpy().astype(np.float32)


@dataclass
class GeoClipHeads:
    """GeoCLIP's trained heads (image MLP, location encoder, logit scale): the package's, or a release's."""

    image_mlp: torch.nn.Sequential
    location_encoder: torch.nn.Module
    logit_scale: torch.Tensor

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], sigmas: tuple[float, ...] = GEOCLIP_SIGMAS) -> GeoClipHeads:
        model = GeoClipModel(sigmas, queue_size=1)
        model.load_package_state(state)
        return cls(model.image_mlp.eval(), model.location_encoder.eval(), model.logit_scale.detach().float())

    @classmethod
    def from_package(cls) -> GeoClipHeads:
        return cls.from_state(published_state())


class GeoClip:
    """Top-k gallery locations and their probabilities for batches of photos.

    With a `release` (a folder of `geoloc geoclip train`, or any in the package's format), its
    heads and gallery replace the package's; its gallery's location features are cached in it.
    """

    def __init__(self, backbone: Backbone, gallery: np.ndarray | None = None, batch_size: int = 4096,
                 release: Path | None = None) -> None:
        if backbone.dim != GEOCLIP_IMAGE_DIM:
            raise InputError(f"GeoCLIP needs a backbone with {GEOCLIP_IMAGE_DIM} features (CLIP ViT-L/14); "
                             f"{backbone.name} has {backbone.dim}")
        self.backbone = backbone
        if release is None:
            self.heads = GeoClipHeads.from_package()
            self.gallery = geoclip_gallery() if gallery is None else np.asarray(gallery, dtype=np.float32)
            weights = _package_file("weights", "location_encoder_weights.pth").read_bytes()
            key = hashlib.sha256(weights + self.gallery.tobytes()).hexdigest()[:24]
            cache = user_cache_folder() / "geoclip" / f"locations-{key}.safetensors"
        else:
            published = read_release(release)
            self.heads = GeoClipHeads.from_state(published.weights, published.sigmas)
            self.gallery = published.gallery if gallery is None else np.asarray(gallery, dtype=np.float32)
            weights, cache = weights_key(release), release / LOCATION_FEATURES
        self.location_features = cached_gallery_features(cache, weights, self.heads.location_encoder, self.gallery,
                                                         batch_size)

    @torch.inference_mode()
    def probabilities(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(photos, gallery) probabilities, each row summing to 1."""
        image = self.heads.image_mlp(self.backbone.features(pixel_values))
        image = torch.nn.functional.normalize(image, dim=1)
        logits = self.heads.logit_scale.exp() * (image @ self.location_features.T)
        return logits.softmax(dim=-1)

    def top_k(self, pixel_values: torch.Tensor, k: int, mass: float = CONFIDENCE_MASS) -> GeoClipGuesses:
        """The k most probable gallery locations per photo, and the radius holding `mass` of the probability."""
        if not 1 <= k <= len(self.gallery):
            raise InputError(f"top-k must be between 1 and {len(self.gallery)}, got {k}")
        probabilities = self.probabilities(pixel_values)
        best = torch.topk(probabilities, k, dim=1)
        coordinates = self.gallery[best.indices.numpy()]
        return GeoClipGuesses(coordinates, best.values.numpy(), self._radius_km(coordinates[:, 0], probabilities, mass))

    def _radius_km(self, centres: np.ndarray, probabilities: torch.Tensor, mass: float) -> np.ndarray:
        """Per photo, the distance from the best guess within which the model puts `mass` of its belief."""
        lat, lon = self.gallery[:, 0].astype(np.float64), self.gallery[:, 1].astype(np.float64)
        radii = np.empty(len(centres))
        for row, (centre, belief) in enumerate(zip(centres, probabilities.numpy())):
            distances = great_circle_km(centre[0], centre[1], lat, lon)
            order = np.argsort(distances)
            within = np.searchsorted(np.cumsum(belief[order], dtype=np.float64), mass)
            radii[row] = distances[order[min(within, len(order) - 1)]]
        return radii
