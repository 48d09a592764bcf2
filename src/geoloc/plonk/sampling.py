"""Sampling PLONK's density over the Earth, and its exact log-likelihood, for many photos at once.

Samplers walk the noise levels of the schedule from noise (t=1) to data (t=0) in Euler
steps, as PLONK's pipeline pairs them with its checkpoints: `riemannian_flow` (flow matching
on the sphere: step, then project back onto it), `flow` (flow matching in R^3) and `ddim`
(a diffusion model's noise prediction, DDIM's deterministic update). Classifier-free
guidance mixes the prediction for the photo with the one for a zero embedding.

The log-likelihood of a point integrates the flow's ODE from the point (t=0) to the base
distribution (t=1) together with the divergence of the velocity (dopri5, PLONK's
tolerances), uniform on the sphere at t=1, in nats per steradian. The divergence is the
trace of a 3x3 Jacobian: one forward-mode pass over three copies of the batch, one per
basis direction, gives it for every row at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from geoloc.errors import InputError
from geoloc.plonk.network import PlonkNetwork, Schedule

SAMPLERS = ("riemannian_flow", "flow", "ddim")
DEFAULT_STEPS = 250
LOG_UNIFORM_SPHERE = -math.log(4 * math.pi)
"""log density of the uniform distribution on the unit sphere, per steradian: PLONK's base at t=1."""


def guided_prediction(network: PlonkNetwork, points: torch.Tensor, embeddings: torch.Tensor, gamma: torch.Tensor,
                      cfg: float) -> torch.Tensor:
    """The network's output, pushed away from the unconditional one (zero embedding) by `cfg` when above 0."""
    if cfg <= 0:
        return network(points, embeddings, gamma)
    both = network(torch.cat([points, points]), torch.cat([embeddings, torch.zeros_like(embeddings)]),
                   torch.cat([gamma, gamma]))
    conditional, unconditional = both.chunk(2)
    return conditional * (1 + cfg) - unconditional * cfg


def _riemannian_flow_step(x: torch.Tensor, velocity: torch.Tensor, now: torch.Tensor, after: torch.Tensor):
    return torch.nn.functional.normalize(x + (after - now) * velocity, dim=-1)


def _flow_step(x: torch.Tensor, velocity: torch.Tensor, now: torch.Tensor, after: torch.Tensor):
    return x + (after - now) * velocity


def _ddim_step(x: torch.Tensor, noise: torch.Tensor, now: torch.Tensor, after: torch.Tensor):
    clean = ((x - torch.sqrt(1 - now) * noise) / torch.sqrt(now)).clamp(-1, 1)
    noise = (x - torch.sqrt(now) * clean) / torch.sqrt(1 - now)
    return torch.sqrt(after) * clean + torch.sqrt(1 - after) * noise


STEPS: dict[str, Callable] = {"riemannian_flow": _riemannian_flow_step, "flow": _flow_step, "ddim": _ddim_step}


@torch.no_grad()
def sample_points(network: PlonkNetwork, sampler: str, schedule: Schedule, embeddings: torch.Tensor,
                  noise: torch.Tensor, steps: int = DEFAULT_STEPS, cfg: float = 0.0) -> torch.Tensor:
    """(N, 3) samples, one per row of `embeddings`, from the starting points `noise` (N, 3)."""
    if sampler not in STEPS:
        raise InputError(f"unknown sampler {sampler!r}: one of {', '.join(SAMPLERS)}")
    step = STEPS[sampler]
    x = noise.to(torch.float32)
    gammas = schedule(1 - torch.arange(steps + 1, dtype=torch.float32, device=x.device) / steps)
    for now, after in zip(gammas[:-1], gammas[1:]):
        x = step(x, guided_prediction(network, x, embeddings, now.expand(len(x)), cfg), now, after)
    return x


def to_degrees(points: torch.Tensor) -> torch.Tensor:
    """(N, 2) latitude and longitude in degrees of points in R^3 (their direction from the centre)."""
    unit = torch.nn.functional.normalize(points.double(), dim=-1)
    return torch.rad2deg(torch.stack([unit[:, 2].clamp(-1, 1).asin(), torch.atan2(unit[:, 1], unit[:, 0])], dim=-1))


def to_points(degrees: torch.Tensor) -> torch.Tensor:
    """(N, 3) unit vectors of (N, 2) latitudes and longitudes in degrees."""
    lat, lon = torch.deg2rad(degrees[:, 0]), torch.deg2rad(degrees[:, 1])
    return torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], dim=-1)


def log_likelihood(network: PlonkNetwork, schedule: Schedule, embeddings: torch.Tensor, points: torch.Tensor,
                   cfg: float = 0.0, atol: float = 1e-6, rtol: float = 1e-6) -> torch.Tensor:
    """(N,) log density, nats per steradian, of each point (N, 3) on the sphere given its row's embedding."""
    import torch.autograd.forward_ad as forward_ad
    from torchdiffeq import odeint

    points = points.to(torch.float32)
    rows = len(points)
    basis = torch.eye(3, dtype=points.dtype, device=points.device).repeat_interleave(rows, dim=0)
    tripled = embeddings.repeat(3, 1)

    def dynamics(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        gamma = schedule(t).expand(3 * rows)
        rate = schedule.derivative(t)

        with forward_ad.dual_level():
            x = forward_ad.make_dual(state[:, :3].repeat(3, 1), basis)
            values, directional = forward_ad.unpack_dual(rate * guided_prediction(network, x, tripled, gamma, cfg))
        divergence = torch.einsum("ibi->b", directional.view(3, rows, 3))
        return torch.cat([values[:rows], divergence[:, None]], dim=-1)

    start = torch.cat([points, torch.zeros_like(points[:, :1])], dim=-1)
    times = torch.tensor([0.0, 1.0], device=points.device)
    with torch.no_grad():
        end = odeint(dynamics, start, times, atol=atol, rtol=rtol, method="dopri5", options={"min_step": 1e-5})[-1]
    return LOG_UNIFORM_SPHERE + end[:, 3]


def localizability(log_densities: torch.Tensor) -> torch.Tensor:
    """PLONK's localizability of photos from their samples' log densities (photos, K): the mean over the
    photo's own samples (an importance-sampled expected log density) divided by 4 pi ln 2, as the
    pipeline's compute_localizability divides it."""
    return log_densities.mean(dim=-1) / (4 * math.pi * math.log(2))
