"""The light ranker: a small network that scores (query, candidate) pairs from embeddings, trains on a CPU.

Where GeoRanker reads the photos with a 7B vision-language model, this one reads what the
pipeline already has: the query photo's embedding, the candidate's coordinates as random
Fourier features on the sphere at several scales (fixed random matrices, saved with the
model), the embedding of the candidate's gallery photo (retrieval candidates) and of its
place text when present, the candidate's source, rank and generator score, and how much
the group's other candidates agree with it (kernel density of the group at a few radii,
plain and weighted by how much each gallery photo looks like the query). It trains on
groups of candidates with GeoRanker's multi-order distance loss (`geoloc.rank.losses`).

Model folder: `light_ranker.json` (config) and `light_ranker.safetensors` (weights and the
Fourier matrices); `geoloc ranker score --adapter DIR` recognizes it by the JSON file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from numpy.typing import NDArray

from geoloc.candidates import SOURCES
from geoloc.errors import InputError
from geoloc.fitting import FitSettings, fit
from geoloc.geo import EARTH_RADIUS_KM, distance_km, to_unit_vectors
from geoloc.rank.losses import multi_order_distance_loss
from geoloc.tables import TableError, replace_durably, rows_of, write_table, write_text

CONFIG_FILE = "light_ranker.json"
WEIGHTS_FILE = "light_ranker.safetensors"
FORMAT = "geoloc-light-ranker/1"
RANKED_SOURCES = SOURCES[:5]
"""The sources with a one-hot feature: the five light rankers were first made with, so saved ones keep loading.
A later source (plonk) has none; its rank and score still count."""
RANKED_INDEX = {name: i for i, name in enumerate(RANKED_SOURCES)}
SCALARS = len(RANKED_SOURCES) + 3
"""Per candidate: source one-hot, log(1 + rank), generator score (0 when none), has-a-score flag."""
LOOK_TEMPERATURES = (0.02, 0.05, 0.1)
"""Softmax temperatures over the query-gallery cosines for the look-weighted group support."""


def is_light_ranker(folder: Path) -> bool:
    """Whether `folder` holds a light ranker (rather than a GeoRanker adapter)."""
    return (Path(folder) / CONFIG_FILE).is_file()


@dataclass(frozen=True)
class LightConfig:
    dim: int
    text_dim: int = 0
    hidden: int = 128
    fourier_features: int = 32
    """Random directions per scale; each gives a cosine and a sine."""
    fourier_sigmas: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0)
    """Frequency scales in inverse radians: 1 resolves ~6000 km, 1024 ~6 km."""
    consensus_km: tuple[float, ...] = (5.0, 25.0, 100.0, 750.0)
    backbone: str | None = None
    format: str = FORMAT


class LightRanker(torch.nn.Module):
    """Rewards (groups, candidates) for candidate groups; padded positions get -inf."""

    def __init__(self, config: LightConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden
        generator = torch.Generator().manual_seed(seed)
        sigmas = torch.tensor(config.fourier_sigmas, dtype=torch.float32)
        directions = torch.randn(len(sigmas), config.fourier_features, 3, generator=generator)
        self.register_buffer("fourier", (directions * sigmas[:, None, None]).reshape(-1, 3))
        self.query = torch.nn.Linear(config.dim, hidden)
        self.place = torch.nn.Sequential(torch.nn.Linear(2 * self.fourier.shape[0], hidden), torch.nn.GELU(),
                                         torch.nn.Linear(hidden, hidden))
        self.gallery = torch.nn.Linear(config.dim, hidden)
        self.text = torch.nn.Linear(config.text_dim, hidden) if config.text_dim else None
        scalars = SCALARS + 2 + (2 + len(LOOK_TEMPERATURES)) * len(config.consensus_km)
        self.head = torch.nn.Sequential(torch.nn.Linear(5 * hidden + scalars, hidden), torch.nn.GELU(),
                                        torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))

    def forward(self, query: torch.Tensor, xyz: torch.Tensor, scalars: torch.Tensor, valid: torch.Tensor,
                gallery: torch.Tensor, has_gallery: torch.Tensor, text: torch.Tensor | None = None,
                has_text: torch.Tensor | None = None) -> torch.Tensor:
        """query (B, D); xyz (B, G, 3); scalars (B, G, SCALARS); valid, has_gallery, has_text (B, G);
        gallery (B, G, D); text (B, G, text_dim) -> rewards (B, G)."""
        projected = self.query(query)[:, None, :]
        angles = xyz @ self.fourier.T
        place = self.place(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1))
        has_gallery = has_gallery.to(query.dtype)[..., None]
        seen = self.gallery(gallery) * has_gallery
        if self.text is not None and text is not None and has_text is not None:
            seen = seen + self.text(text) * has_text.to(query.dtype)[..., None]
        similarity = (query[:, None, :] * gallery).sum(-1, keepdim=True) * has_gallery
        features = torch.cat([
            projected * place, projected * seen, place, seen, projected.expand_as(place), scalars,
            similarity, has_gallery,
            self._consensus(query, xyz, valid, gallery, similarity[..., 0], has_gallery[..., 0]),
        ], dim=-1)
        rewards = self.head(features)[..., 0]
        return rewards.masked_fill(~valid, float("-inf"))

    def _consensus(self, query: torch.Tensor, xyz: torch.Tensor, valid: torch.Tensor, gallery: torch.Tensor,
                   similarity: torch.Tensor, has_gallery: torch.Tensor) -> torch.Tensor:
        """How strongly the group supports each candidate, at each radius.

        Three kinds: the share of the group nearby; the nearby mass of the group weighted by
        how much each gallery photo looks like the query (softmax of cosine / T, a few T);
        and the query's cosine with the mean gallery photo nearby, which averages out the
        gallery photos' own noise.
        """
        angle = torch.arccos((xyz @ xyz.transpose(1, 2)).clamp(-1.0, 1.0))
        others = valid[:, None, :].to(xyz.dtype)
        hidden = has_gallery <= 0
        looks = [torch.nan_to_num(torch.softmax((similarity / t).masked_fill(hidden, float("-inf")), dim=-1))[:, None]
                 for t in LOOK_TEMPERATURES]
        parts = []
        for radius in self.config.consensus_km:
            kernel = torch.exp(-angle * (EARTH_RADIUS_KM / radius))
            parts.append((kernel * others).sum(-1) / others.sum(-1).clamp(min=1.0))
            parts.extend((kernel * look).sum(-1) for look in looks)
            nearby = kernel * has_gallery[:, None, :]
            mean_photo = (nearby @ gallery) / nearby.sum(-1, keepdim=True).clamp(min=1e-6)
            parts.append((mean_photo * query[:, None, :]).sum(-1))
        return torch.stack(parts, dim=-1)


@dataclass
class Groups:
    """Candidate groups as dense arrays (queries, group), padded where a query has fewer candidates."""

    query_ids: NDArray[np.object_]
    query: torch.Tensor
    xyz: torch.Tensor
    lat: NDArray[np.float64]
    lon: NDArray[np.float64]
    scalars: torch.Tensor
    valid: torch.Tensor
    gallery_rows: torch.Tensor
    """Rows of `gallery_vectors`, -1 where the candidate has no gallery photo embedding."""
    text_rows: torch.Tensor
    gallery_vectors: torch.Tensor
    text_vectors: torch.Tensor
    distances: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.query_ids)

    def inputs(self, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """The forward arguments of some groups, gathered on `device`."""
        gallery_rows, text_rows = self.gallery_rows[rows], self.text_rows[rows]
        values = {
            "query": self.query[rows], "xyz": self.xyz[rows], "scalars": self.scalars[rows], "valid": self.valid[rows],
            "gallery": self.gallery_vectors[gallery_rows.clamp(min=0)], "has_gallery": gallery_rows >= 0,
            "text": self.text_vectors[text_rows.clamp(min=0)], "has_text": text_rows >= 0,
        }
        return {name: value.to(device) for name, value in values.items()}


@dataclass(frozen=True)
class QueryVectors:
    """Query embeddings held in memory (a recipe embeds its photos once), in place of an embeddings folder."""

    ids: list[str]
    vectors: NDArray[np.float32]
    backbone: str | None

    def by_id(self, ids: pl.Series) -> NDArray[np.float32]:
        rows = rows_of(ids.cast(pl.Utf8), pl.Series(self.ids, dtype=pl.Utf8))
        if (rows < 0).any():
            raise TableError(f"no query embedding for {int((rows < 0).sum())} quer(ies), "
                             f"e.g. {ids[int(np.argmin(rows))]!r}")
        return self.vectors[rows]


@dataclass
class Lookups:
    """Where a query's and a candidate's embeddings come from (embeddings folders, see `geoloc embed`)."""

    query_embeddings: Path | QueryVectors
    gallery_embeddings: Path | None = None
    """Gallery photo embeddings, ids = the candidates' ref_uri (or mapped through gallery_index)."""
    gallery_index: Path | None = None
    """A `geoloc index build` folder whose gallery.parquet maps ref_uri (uri) to image_id."""
    text_embeddings: Path | None = None
    """Place-text embeddings whose ids are the place texts themselves."""


def _gallery_keys(frame: pl.DataFrame, lookups: Lookups) -> pl.Series:
    uris = frame["ref_uri"]
    if lookups.gallery_index is None:
        return uris
    gallery = pl.read_parquet(lookups.gallery_index / "gallery.parquet", columns=["image_id", "uri"])
    return pl.DataFrame({"uri": uris}).join(gallery.unique("uri"), on="uri", how="left",
                                            maintain_order="left")["image_id"]


def build_groups(frame: pl.DataFrame, lookups: Lookups, group_size: int | None = None,
                 truth: pl.DataFrame | None = None) -> tuple[Groups, dict]:
    """Dense groups from a candidates table (best-ranked first within each source, sources in SOURCES order).

    `group_size` keeps at most that many candidates per query (None: all). With `truth`
    (image_id, lat, lon), each candidate's true distance in km. Raises TableError for ids
    without an embedding; the returned dict holds the backbones of the folders read.
    """
    from geoloc.embeddings import embeddings_by_id, embeddings_of

    if frame.height == 0:
        raise TableError("the candidates table is empty: nothing to rank")
    source_order = pl.col("source").replace_strict({name: i for i, name in enumerate(SOURCES)}, default=len(SOURCES))
    frame = frame.sort("query_id", source_order, "rank").with_columns(
        pl.int_range(pl.len()).over("query_id").alias("position"))
    if group_size is not None:
        frame = frame.filter(pl.col("position") < group_size)
    query_ids = frame["query_id"].unique(maintain_order=True)
    query_row = rows_of(frame["query_id"], query_ids)
    position = frame["position"].to_numpy()
    queries, width = len(query_ids), int(position.max()) + 1
    backbones = {}

    def dense(values: NDArray, fill: float | int, dtype: Any) -> NDArray:
        array = np.full((queries, width, *values.shape[1:]), fill, dtype=dtype)
        array[query_row, position] = values
        return array

    if isinstance(lookups.query_embeddings, QueryVectors):
        query_vectors, backbones["query"] = lookups.query_embeddings.by_id(query_ids), lookups.query_embeddings.backbone
    else:
        try:
            query_vectors = embeddings_by_id(lookups.query_embeddings, query_ids, "query photo(s)")
        except ValueError as error:
            raise TableError(str(error)) from error
        backbones["query"] = json.loads((lookups.query_embeddings / "meta.json").read_text()).get("backbone")
    dim = query_vectors.shape[1]
    gallery_vectors, gallery_rows = np.zeros((1, dim), np.float32), np.full(frame.height, -1, np.int64)
    if lookups.gallery_embeddings is not None:
        meta, gallery_vectors, gallery_rows = embeddings_of(lookups.gallery_embeddings, _gallery_keys(frame, lookups))
        backbones["gallery"] = meta.get("backbone")
        unknown = frame.filter(pl.Series((gallery_rows < 0) & frame["ref_uri"].is_not_null().to_numpy()))
        if unknown.height:
            raise TableError(f"{lookups.gallery_embeddings}: no embedding for {unknown.height} candidate gallery "
                             f"photo(s), e.g. ref_uri {unknown['ref_uri'][0]!r} (query {unknown['query_id'][0]!r})")
        gallery_vectors = gallery_vectors if len(gallery_vectors) else np.zeros((1, dim), np.float32)
    text_vectors, text_rows = np.zeros((1, 1), np.float32), np.full(frame.height, -1, np.int64)
    if lookups.text_embeddings is not None:
        _, text_vectors, text_rows = embeddings_of(lookups.text_embeddings, frame["text"].replace("", None))
        text_vectors = text_vectors if len(text_vectors) else np.zeros((1, text_vectors.shape[1]), np.float32)
    sources = frame["source"].replace_strict(RANKED_INDEX, default=len(RANKED_INDEX)).to_numpy()
    score = (frame["score"].cast(pl.Float64, strict=False).to_numpy() if "score" in frame.columns
             else np.full(frame.height, np.nan))
    scalars = np.zeros((frame.height, SCALARS), np.float32)
    scalars[:, :len(RANKED_SOURCES)] = np.eye(len(RANKED_SOURCES) + 1, dtype=np.float32)[sources, :-1]
    scalars[:, len(RANKED_SOURCES)] = np.log1p(frame["rank"].cast(pl.Float64).to_numpy())
    scalars[:, len(RANKED_SOURCES) + 1] = np.nan_to_num(score)
    scalars[:, len(RANKED_SOURCES) + 2] = np.isfinite(score)
    lat, lon = frame["lat"].to_numpy(), frame["lon"].to_numpy()
    groups = Groups(
        query_ids=query_ids.to_numpy().astype(object),
        query=torch.tensor(query_vectors, dtype=torch.float32),
        xyz=torch.from_numpy(dense(to_unit_vectors(lat, lon).astype(np.float32), 0.0, np.float32)),
        lat=dense(lat, np.nan, np.float64), lon=dense(lon, np.nan, np.float64),
        scalars=torch.from_numpy(dense(scalars, 0.0, np.float32)),
        valid=torch.from_numpy(dense(np.ones(frame.height, bool), False, bool)),
        gallery_rows=torch.from_numpy(dense(gallery_rows, -1, np.int64)),
        text_rows=torch.from_numpy(dense(text_rows, -1, np.int64)),
        gallery_vectors=torch.tensor(gallery_vectors, dtype=torch.float32),
        text_vectors=torch.tensor(text_vectors, dtype=torch.float32),
    )
    if truth is not None:
        true = pl.DataFrame({"image_id": query_ids}).join(truth, on="image_id", how="left", maintain_order="left")
        lacking = true.filter(pl.col("lat").is_null())["image_id"]
        if len(lacking):
            raise TableError(f"{len(lacking)} quer(ies) have candidates but no true location, e.g. {lacking[0]!r}")
        true_lat, true_lon = true["lat"].to_numpy()[:, None], true["lon"].to_numpy()[:, None]
        groups.distances = torch.from_numpy(np.nan_to_num(distance_km(groups.lat, groups.lon, true_lat, true_lon),
                                                          nan=np.inf).astype(np.float32))
    return groups, backbones


@torch.no_grad()
def score_groups(model: LightRanker, groups: Groups, batch_size: int = 1024,
                 progress: Callable[[int, int], None] = lambda done, total: None) -> NDArray[np.float32]:
    """Rewards (queries, group), -inf on padding."""
    model.eval()
    device = next(model.parameters()).device
    rewards = []
    for start in range(0, len(groups), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(groups)))
        rewards.append(model(**groups.inputs(rows, device)).float().cpu())
        progress(int(rows[-1]) + 1, len(groups))
    return torch.cat(rewards).numpy() if rewards else np.empty((0, 0), np.float32)


def save_light_ranker(model: LightRanker, folder: Path) -> None:
    """Weights (with the Fourier matrices) in safetensors, then the JSON config that marks the folder done."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    weights = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    replace_durably(folder / WEIGHTS_FILE, lambda temporary: save_file(weights, str(temporary)))
    write_text(folder / CONFIG_FILE, json.dumps(asdict(model.config), indent=2) + "\n")


def load_light_ranker(folder: Path) -> LightRanker:
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not a light ranker folder (missing {', '.join(missing)})")
    values = json.loads((folder / CONFIG_FILE).read_text())
    if values.get("format") != FORMAT:
        raise InputError(f"{folder}: unknown light ranker format {values.get('format')!r}; expected {FORMAT}")
    for name in ("fourier_sigmas", "consensus_km"):
        values[name] = tuple(values[name])
    model = LightRanker(LightConfig(**values))
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.eval()


@dataclass
class LightTrainConfig:
    """What `geoloc ranker train --light --config light_ranker.yaml` reads; see examples/light_ranker.yaml."""

    candidates: Path
    truth: Path
    query_embeddings: Path
    output: Path
    gallery_embeddings: Path | None = None
    gallery_index: Path | None = None
    text_embeddings: Path | None = None
    group_size: int = 15
    top_k: int | None = 1
    first_order_weight: float = 0.7
    hidden: int = 128
    fourier_features: int = 32
    fourier_sigmas: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0, 256.0, 1024.0)
    consensus_km: tuple[float, ...] = (5.0, 25.0, 100.0, 750.0)
    training: FitSettings = field(default_factory=lambda: FitSettings(epochs=4, batch_size=256, learning_rate=2e-3))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], relative_to: Path = Path(".")) -> LightTrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - {"light"})
        if unknown:
            raise InputError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = {key: value for key, value in values.items() if key != "light"}
        for name in ("candidates", "truth", "query_embeddings", "output", "gallery_embeddings", "gallery_index",
                     "text_embeddings"):
            if values.get(name) is not None:
                values[name] = relative_to / Path(values[name])
        for name in ("fourier_sigmas", "consensus_km"):
            if name in values:
                values[name] = tuple(float(value) for value in values[name])
        training = dict(values.get("training") or {})
        unknown = sorted(set(training) - {f.name for f in fields(FitSettings)})
        if unknown:
            raise InputError(f"unknown training setting(s) {', '.join(unknown)}")
        values["training"] = FitSettings(**training)
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: Path) -> LightTrainConfig:
        import yaml

        with open(path) as handle:
            return cls.from_dict(yaml.safe_load(handle) or {}, relative_to=path.parent)


@dataclass
class LightTrainResult:
    model: LightRanker
    queries: int
    short_groups: int
    losses: list[float]


def fit_light_ranker(groups: Groups, config: LightTrainConfig, backbone: str | None = None,
                     say: Callable[[str], None] = lambda line: None,
                     progress: Callable[[int, int], None] = lambda done, total: None) -> LightTrainResult:
    """Train on the groups that have `group_size` candidates (the others are counted and left out)."""
    if groups.distances is None:
        raise InputError("training groups need true distances")
    keep = torch.nonzero(groups.valid.sum(dim=1) == config.group_size)[:, 0]
    if len(keep) == 0:
        raise InputError(f"no query has {config.group_size} candidates; lower group_size")
    model = LightRanker(LightConfig(
        dim=groups.query.shape[1], text_dim=groups.text_vectors.shape[1] if groups.text_rows.ge(0).any() else 0,
        hidden=config.hidden, fourier_features=config.fourier_features, fourier_sigmas=config.fourier_sigmas,
        consensus_km=config.consensus_km, backbone=backbone), seed=config.training.seed)

    def loss_of(network: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
        device = next(network.parameters()).device
        rows = keep[rows.cpu()]
        rewards = network(**groups.inputs(rows, device))
        return multi_order_distance_loss(rewards, groups.distances[rows].to(device), config.top_k,
                                         config.first_order_weight)

    trained, losses = fit(model, len(keep), loss_of, config.training, say, progress)
    return LightTrainResult(trained, len(keep), len(groups) - len(keep), losses)


def train_light_ranker(config: LightTrainConfig, say: Callable[[str], None] = lambda line: None,
                       progress: Callable[[int, int], None] = lambda done, total: None) -> LightTrainResult:
    """`geoloc ranker train --light`: read candidates, truth and embeddings, train, save to `config.output`."""
    from geoloc.evaluate import load_truth
    from geoloc.rank.ranking import read_candidates

    lookups = Lookups(config.query_embeddings, config.gallery_embeddings, config.gallery_index,
                      config.text_embeddings)
    groups, backbones = build_groups(read_candidates(config.candidates), lookups, config.group_size,
                                     load_truth(config.truth))
    result = fit_light_ranker(groups, config, backbones.get("query"), say, progress)
    save_light_ranker(result.model, config.output)
    return result


def rank_light(frame: pl.DataFrame, model: LightRanker, lookups: Lookups, batch_size: int = 1024,
               progress: Callable[[int, int], None] = lambda done, total: None) -> pl.DataFrame:
    """Predictions (image_id, lat, lon, score): each query's best-rewarded candidate."""
    from geoloc.rank.ranking import PREDICTION_COLUMNS

    groups, _ = build_groups(frame, lookups)
    if groups.query.shape[1] != model.config.dim:
        raise TableError(f"the model takes {model.config.dim}-d embeddings, the query embeddings are "
                         f"{groups.query.shape[1]}-d: were they made with another backbone "
                         f"({model.config.backbone})?")
    texts = groups.text_vectors.shape[1] if bool((groups.text_rows >= 0).any()) else 0
    if texts and texts != model.config.text_dim:
        raise TableError(f"the model takes {model.config.text_dim}-d place-text embeddings (0: none), the text "
                         f"embeddings are {texts}-d")
    if not texts:  # no place texts: the text branch sees zeros behind an all-false mask
        groups.text_vectors = torch.zeros((1, max(model.config.text_dim, 1)))
    rewards = score_groups(model, groups, batch_size, progress)
    best = np.argmax(rewards, axis=1)
    rows = np.arange(len(groups))
    return pl.DataFrame({"image_id": groups.query_ids.tolist(), "lat": groups.lat[rows, best],
                         "lon": groups.lon[rows, best], "score": rewards[rows, best].astype(np.float64)},
                        schema=PREDICTION_COLUMNS)


def score_light_file(candidates_path: Path, out: Path, adapter: Path, lookups: Lookups,
                     top: Mapping[str, int], batch_size: int = 1024,
                     progress: Callable[[int, int], None] = lambda done, total: None) -> int:
    """`geoloc ranker score` with a light ranker folder: write predictions atomically; returns the queries."""
    from geoloc.rank.ranking import read_candidates, select_candidates

    scored, _ = select_candidates(read_candidates(candidates_path), top, 0)
    predictions = rank_light(scored, load_light_ranker(adapter), lookups, batch_size, progress)
    write_table(predictions, out)
    return predictions.height

