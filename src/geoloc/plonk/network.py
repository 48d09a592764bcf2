"""PLONK's denoiser and noise schedules, with the published checkpoints' parameter names.

The network (an MLP of adaptive-layer-norm blocks conditioned on a frozen image embedding
and on the noise level) predicts a velocity (flow models) or the noise (diffusion models)
for a point in R^3. Its state dict uses the names of `diff-plonk`'s `Plonk` class, so the
published `model.safetensors` files load as they are, and folders we write load there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from geoloc.errors import InputError


@dataclass(frozen=True)
class NetworkConfig:
    """The keys of a PLONK checkpoint's config.json (the package passes them to its network)."""

    input_dim: int = 3
    dim: int = 512
    depth: int = 12
    expansion: int = 4
    cond_dim: int = 1024

    def as_json(self) -> dict:
        return asdict(self)


class NoiseLevelEmbedding(nn.Module):
    """Sinusoidal features of 1000 x the noise level, standardized, then an MLP (EDM's positional embedding)."""

    def __init__(self, channels: int, expansion: int = 4, max_positions: int = 10_000) -> None:
        super().__init__()
        self.encode_time = _Frequencies(channels, max_positions)
        self.map_time = nn.Sequential(nn.Linear(channels, channels * expansion), nn.SiLU(),
                                      nn.Linear(channels * expansion, channels * expansion))

    def forward(self, gamma: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(gamma * 1000.0, self.encode_time.freqs)
        features = torch.cat([angles.cos(), angles.sin()], dim=1)
        features = (features - features.mean(dim=-1, keepdim=True)) / features.std(dim=-1, keepdim=True)
        return self.map_time(features)


class _Frequencies(nn.Module):
    """Holds the frequency buffer under the checkpoint's name (`time_embedder.encode_time.freqs`)."""

    def __init__(self, channels: int, max_positions: int) -> None:
        super().__init__()
        exponents = 2 * torch.arange(channels // 2, dtype=torch.float32) / channels
        self.register_buffer("freqs", (1 / max_positions) ** exponents)


class AdaptiveBlock(nn.Module):
    """A residual MLP whose layer norm's scale, shift and output gate come from the conditioning."""

    def __init__(self, dim: int, expansion: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim * expansion), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(dim * expansion, dim))
        self.ada_map = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 3))
        self.ln = nn.LayerNorm(dim, elementwise_affine=False)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift, gate = self.ada_map(cond).chunk(3, dim=-1)
        return x + self.mlp((1 + scale) * self.ln(x) + shift) * gate


class PlonkNetwork(nn.Module):
    """PLONK's GeoAdaLNMLP: (points (B, 3), embeddings (B, cond_dim), noise levels (B,)) -> (B, 3)."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        if config.dim % 4:
            raise InputError(f"PLONK's width must be a multiple of 4, got {config.dim}")
        self.config = config
        dim = config.dim
        self.time_embedder = NoiseLevelEmbedding(dim // 4)
        self.cond_mapper = nn.Linear(config.cond_dim, dim)
        self.initial_mapper = nn.Linear(config.input_dim, dim)
        self.blocks = nn.ModuleList(AdaptiveBlock(dim, config.expansion) for _ in range(config.depth))
        self.final_adaln = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 2))
        self.final_ln = nn.LayerNorm(dim, elementwise_affine=False)
        self.final_linear = nn.Linear(dim, config.input_dim)

    def forward(self, points: torch.Tensor, embeddings: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        x = self.initial_mapper(points)
        cond = self.cond_mapper(embeddings) + self.time_embedder(gamma)
        for block in self.blocks:
            x = block(x, cond)
        scale, shift = self.final_adaln(cond).chunk(2, dim=-1)
        return self.final_linear((1 + scale) * self.final_ln(x) + shift)


@dataclass(frozen=True)
class Schedule:
    """gamma(t), the share of signal at time t (t=0: data, gamma=1; t=1: noise, gamma~0), and its derivative.

    PLONK's pipeline samples and measures likelihoods with `sigmoid` from -7 to 3, tau 1, and
    its checkpoints were trained with it; `linear` (gamma = 1 - t) is its other closed form.
    """

    kind: str = "sigmoid"
    start: float = -7.0
    end: float = 3.0
    tau: float = 1.0
    clip_min: float = 1e-9

    def __post_init__(self) -> None:
        if self.kind not in ("sigmoid", "linear"):
            raise InputError(f"unknown noise schedule {self.kind!r}: sigmoid or linear")

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return (1.0 - t).clamp(self.clip_min, 1.0)
        low, high = self._ends()
        return ((high - torch.sigmoid(self._argument(t))) / (high - low)).clamp(self.clip_min, 1.0)

    def derivative(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return -torch.ones_like(t)
        low, high = self._ends()
        s = torch.sigmoid(self._argument(t))
        return -(self.end - self.start) * s * (1 - s) / (self.tau * (high - low))

    def as_json(self) -> dict:
        return asdict(self)

    def _argument(self, t: torch.Tensor) -> torch.Tensor:
        return (t * (self.end - self.start) + self.start) / self.tau

    def _ends(self) -> tuple[float, float]:
        return (torch.sigmoid(torch.tensor(self.start / self.tau)).item(),
                torch.sigmoid(torch.tensor(self.end / self.tau)).item())
