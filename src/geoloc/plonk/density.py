"""What PLONK says about a photo, from K samples of its density: modes, likelihoods, a confidence region.

All photos of a batch are sampled together (K rows per photo) and their samples' exact log
densities measured together, on the device. A photo's candidates are its modes: the most
likely sample, then the most likely one farther than `separation_km` from every mode kept,
and so on. Its confidence region of mass m is the highest-density region {x: p(x) >= t}
holding m of the probability: t is the (1 - m) quantile of the samples' densities (samples
come from p), and its area is the importance-sampled mean of 1[p(x) >= t] / p(x). The
radius is the distance from the best mode holding m of the samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from geoloc.errors import InputError
from geoloc.geo import EARTH_RADIUS_KM
from geoloc.plonk.model import PlonkModel
from geoloc.plonk.sampling import DEFAULT_STEPS, localizability, log_likelihood, sample_points, to_degrees

DEFAULT_MASS = 0.9


@dataclass(frozen=True)
class DensitySettings:
    samples: int = 64
    steps: int = DEFAULT_STEPS
    cfg: float = 0.0
    seed: int = 0
    modes: int = 5
    separation_km: float = 100.0
    mass: float = DEFAULT_MASS

    def __post_init__(self) -> None:
        if not 0 < self.mass < 1:
            raise InputError(f"the confidence region's mass must be between 0 and 1, got {self.mass}")


@dataclass(frozen=True)
class PhotoDensities:
    """For P photos: M modes (P, M, 2) in degrees with their log densities (P, M) and the share of the
    photo's samples nearest to each (P, M) (NaN where a photo has fewer modes), localizability (P,),
    the region's area (P,) in km^2, its radius (P,) in km, and its level (P,): the log density above which
    a point lies in it."""

    modes: np.ndarray
    log_density: np.ndarray
    share: np.ndarray
    localizability: np.ndarray
    area_km2: np.ndarray
    radius_km: np.ndarray
    level: np.ndarray


def _angles(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Angles in radians between each photo's points (P, K, 3) and its centre (P, 3)."""
    centres = centres[:, None, :].expand_as(points)
    return torch.atan2(torch.linalg.cross(points, centres).norm(dim=-1), (points * centres).sum(dim=-1))


def _modes(points: torch.Tensor, log_density: torch.Tensor, count: int, separation: float):
    """Indices (P, M) of greedily picked high-density samples at least `separation` radians apart (-1: none)."""
    alive = torch.ones_like(log_density, dtype=torch.bool)
    rows = torch.arange(len(points), device=points.device)
    picked = []
    for _ in range(count):
        best = torch.where(alive, log_density, -torch.inf).argmax(dim=1)
        found = alive[rows, best]
        picked.append(torch.where(found, best, -1))
        alive &= _angles(points, points[rows, best]) > separation
    return torch.stack(picked, dim=1)


def _shares(points: torch.Tensor, centres: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
    """(P, M) share of each photo's samples (P, K, 3) whose nearest mode (P, M, 3) is each one."""
    cosines = torch.einsum("pkd,pmd->pkm", points, centres).masked_fill(~found[:, None, :], -torch.inf)
    nearest = torch.nn.functional.one_hot(cosines.argmax(dim=-1), centres.shape[1]).to(points.dtype)
    return nearest.mean(dim=1)


def _region(points: torch.Tensor, log_density: torch.Tensor, best: torch.Tensor, mass: float):
    """(area in steradians, radius in radians from `best`, level) of each photo's highest-density region of
    `mass`."""
    threshold = torch.quantile(log_density, 1 - mass, dim=1, keepdim=True)
    area = torch.where(log_density >= threshold, torch.exp(-log_density), 0.0).mean(dim=1)
    radius = torch.quantile(_angles(points, best), mass, dim=1)
    return area, radius, threshold[:, 0]


@torch.no_grad()
def photo_densities(model: PlonkModel, embeddings: np.ndarray, settings: DensitySettings) -> PhotoDensities:
    """Sample each photo's density (`settings.samples` per photo) and reduce it; one pass for the batch."""
    device = model.device
    photos, k = len(embeddings), settings.samples
    conditions = torch.as_tensor(embeddings, dtype=torch.float32, device=device).repeat_interleave(k, dim=0)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    noise = torch.randn(photos * k, 3, generator=generator, device=device)
    schedule = model.settings.schedule
    raw = sample_points(model.network, model.settings.sampler, schedule, conditions, noise, settings.steps,
                        settings.cfg)
    points = torch.nn.functional.normalize(raw, dim=-1)
    log_density = log_likelihood(model.network, schedule, conditions, points).view(photos, k)
    points = points.view(photos, k, 3)
    picked = _modes(points, log_density, min(settings.modes, k), settings.separation_km / EARTH_RADIUS_KM)
    rows = torch.arange(photos, device=device)[:, None]
    index = picked.clamp(min=0)
    found = picked >= 0
    centres = points[rows, index]
    degrees = to_degrees(centres.reshape(-1, 3)).view(photos, -1, 2)
    modes = torch.where(found[..., None], degrees, torch.nan)
    mode_density = torch.where(found, log_density[rows, index], torch.nan)
    area, radius, level = _region(points, log_density, points[rows[:, 0], index[:, 0]], settings.mass)
    share = torch.where(found, _shares(points, centres, found), torch.nan)
    return PhotoDensities(modes.cpu().numpy(), mode_density.double().cpu().numpy(), share.double().cpu().numpy(),
                          localizability(log_density).double().cpu().numpy(),
                          (area.double() * EARTH_RADIUS_KM**2).cpu().numpy(),
                          (radius.double() * EARTH_RADIUS_KM).cpu().numpy(), level.double().cpu().numpy())
