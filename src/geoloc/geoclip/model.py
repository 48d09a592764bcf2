"""GeoCLIP's trainable part: image MLP, location encoder, temperature, and the dynamic GPS queue.

The CLIP backbone stays frozen, as in GeoCLIP, so the model reads CLIP's raw projected
image features (768 for ViT-L/14) embedded once by `geoloc embed --features raw-geoclip-train`.
The location encoder is the `geoclip` package's own (Equal Earth projection, random Fourier
features at each sigma, one capsule per sigma, summed), so weights move between the package
and geoloc under the package's own names: `image_encoder.mlp.*`, `location_encoder.*`,
`logit_scale`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from geoloc.errors import InputError

GEOCLIP_SIGMAS = (1.0, 16.0, 256.0)
"""The package's capsules: 2^0, 2^4, 2^8."""
QUEUE_SIZE = 4096
"""The package's (and the paper's) dynamic GPS queue."""
IMAGE_DIM = 768
"""CLIP ViT-L/14's projection size, what the MLP reads."""
INITIAL_TEMPERATURE = 0.07
"""CLIP's initial temperature: logit_scale starts at log(1 / 0.07)."""


def location_encoder(sigmas: list[float]) -> nn.Module:
    """The package's LocationEncoder (same capsules, same weight names), summing its capsules on the input's device.

    The package's forward starts the sum from a zero tensor made on the CPU and copied to the
    device at every call; starting from the first capsule adds the same numbers in the same
    order (0 + x is x exactly) without that copy.
    """
    from geoclip.model.location_encoder import LocationEncoder, equal_earth_projection

    class OnDevice(LocationEncoder):
        def forward(self, location: torch.Tensor) -> torch.Tensor:
            projected = equal_earth_projection(location)
            return sum(self._modules[f"LocEnc{index}"](projected) for index in range(self.n))

    return OnDevice(sigma=sigmas, from_pretrained=False)


class GeoClipModel(nn.Module):
    """Image MLP 768->768->512 over raw CLIP features, the location encoder, the learnable logit scale.

    `image_dim` other than CLIP ViT-L/14's 768 is for features of other sizes (a synthetic
    world): such weights train and predict here, but the package cannot load them.
    """

    def __init__(self, sigmas: Sequence[float] = GEOCLIP_SIGMAS, queue_size: int = QUEUE_SIZE,
                 image_dim: int = IMAGE_DIM) -> None:
        super().__init__()
        self.sigmas = [float(sigma) for sigma in sigmas]
        self.image_mlp = nn.Sequential(nn.Linear(image_dim, 768), nn.ReLU(), nn.Linear(768, 512))
        self.location_encoder = location_encoder(self.sigmas)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / INITIAL_TEMPERATURE), dtype=torch.float32))
        # The package starts its queue as normalized Gaussian noise, (2, size), and fills it as it trains.
        self.register_buffer("gps_queue", nn.functional.normalize(torch.randn(2, queue_size), dim=0))
        self.register_buffer("gps_queue_ptr", torch.zeros(1, dtype=torch.long))

    @property
    def queue_size(self) -> int:
        return self.gps_queue.shape[1]

    def image_features(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.image_mlp(features), dim=1)

    def location_features(self, coordinates: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.location_encoder(coordinates), dim=1)

    def forward(self, features: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
        """Logits (photos, locations): exp(logit_scale) times the cosine of image and location features."""
        return self.logit_scale.exp() * (self.image_features(features) @ self.location_features(coordinates).T)

    def queued_coordinates(self) -> torch.Tensor:
        """The queue's (lat, lon) rows, copied: the negatives added to a batch before the batch is enqueued."""
        return self.gps_queue.T.clone()

    @torch.no_grad()
    def enqueue(self, coordinates: torch.Tensor) -> None:
        """Write a batch's coordinates at the pointer, wrapping around; a batch as large as the queue replaces it."""
        size, count = self.queue_size, len(coordinates)
        if count >= size:
            self.gps_queue.copy_(coordinates[-size:].T)
            self.gps_queue_ptr.zero_()
            return
        start = int(self.gps_queue_ptr)
        positions = (start + torch.arange(count, device=coordinates.device)) % size
        self.gps_queue[:, positions] = coordinates.T.to(self.gps_queue.dtype)
        self.gps_queue_ptr[0] = (start + count) % size

    def package_state(self) -> dict[str, torch.Tensor]:
        """The weights under the `geoclip` package's release names (what `GeoCLIP.from_pretrained` loads)."""
        state = {"logit_scale": self.logit_scale.detach()}
        state.update({f"image_encoder.mlp.{key}": value for key, value in self.image_mlp.state_dict().items()})
        state.update({f"location_encoder.{key}": value for key, value in self.location_encoder.state_dict().items()})
        return {key: value.detach().cpu().contiguous() for key, value in state.items()}

    def load_package_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights named as the package names them; every key must match (strict)."""
        parts = {"image_encoder.mlp.": self.image_mlp, "location_encoder.": self.location_encoder}
        expected = {"logit_scale"} | {prefix + key for prefix, module in parts.items() for key in module.state_dict()}
        if set(state) != expected:
            missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
            raise InputError(f"GeoCLIP weights do not match this model (sigmas {self.sigmas}): missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        for prefix, module in parts.items():
            module.load_state_dict({key[len(prefix):]: value for key, value in state.items()
                                    if key.startswith(prefix)})
        with torch.no_grad():
            self.logit_scale.copy_(state["logit_scale"].reshape(()))


def published_state() -> dict[str, torch.Tensor]:
    """GeoCLIP's released weights (shipped in the `geoclip` package), under the package's release names."""
    from importlib import resources

    folder = resources.files("geoclip").joinpath("model", "weights")

    def tensors(name: str) -> dict[str, torch.Tensor]:
        with resources.as_file(folder.joinpath(name)) as path:
            return torch.load(path, map_location="cpu", weights_only=True)

    state = {"logit_scale": torch.as_tensor(tensors("logit_scale_weights.pth")).reshape(())}
    state.update({f"image_encoder.mlp.{k}": v for k, v in tensors("image_encoder_mlp_weights.pth").items()})
    state.update({f"location_encoder.{k}": v for k, v in tensors("location_encoder_weights.pth").items()})
    return state
