"""From a candidates table to predictions: each query's best-rewarded candidate.

Candidates (docs/architecture.md): query_id, source, rank, lat, lon, optional text and ref_uri.
Predictions: image_id (= query_id), lat, lon, score (the winning reward), the schema
`geoloc evaluate` reads. A query whose photo cannot be read gets no prediction and is
reported; a candidate whose gallery photo cannot be read is dropped and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.rank.photos import OpenImage
from geoloc.rank.prompts import Place
from geoloc.rank.scoring import QueryGroup, RewardScorer
from geoloc.tables import TableError, as_float_column, read_table, write_table

DEFAULT_TOP = {"retrieval": 10, "zeroshot": 5}
"""GeoRanker's default: the 10 best retrieval candidates (with gallery photos) and 5 zero-shot ones."""
REQUIRED_COLUMNS = ("query_id", "source", "rank", "lat", "lon")
PREDICTION_COLUMNS = {"image_id": pl.Utf8, "lat": pl.Float64, "lon": pl.Float64, "score": pl.Float64}


@dataclass
class RankingReport:
    queries: int = 0
    predicted: int = 0
    unreadable_queries: list[tuple[str, str]] = field(default_factory=list)
    dropped_candidates: int = 0


def read_candidates(path: Path) -> pl.DataFrame:
    """The candidates table with its documented columns and types; text and ref_uri may be absent."""
    frame = read_table(path)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise TableError(f"{path}: candidates lack column(s) {', '.join(missing)}; found {', '.join(frame.columns)}")
    for column in ("lat", "lon", "rank"):
        frame = as_float_column(frame, column, "query_id", path)
    for column in ("text", "ref_uri"):
        if column not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.Utf8).alias(column))
    return frame.with_columns(pl.col("query_id", "source").cast(pl.Utf8), pl.col("text").fill_null(""))


def select_candidates(
    frame: pl.DataFrame, top: Mapping[str, int], num_negatives: int, negative_source: str = "retrieval"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the candidates to score, the negatives per query).

    Scored: the `top[source]` best-ranked of each source named in `top`, every candidate of
    other sources. Negatives: the `num_negatives` worst-ranked candidates of `negative_source`
    (the end of the retrieval list, GeoRanker's proxy for the farthest places), best first.
    """
    ordered = frame.sort("query_id", "source", "rank")
    position = pl.int_range(pl.len()).over("query_id", "source")
    limit = pl.col("source").replace_strict(dict(top), default=None, return_dtype=pl.Int64)
    scored = ordered.filter(limit.is_null() | (position < limit))
    pool = ordered.filter(pl.col("source") == negative_source)
    negatives = pool.filter(pl.int_range(pl.len()).over("query_id") >= pl.len().over("query_id") - num_negatives)
    return scored, negatives


def _places(frame: pl.DataFrame) -> list[Place]:
    return [Place(lat, lon, text) for lat, lon, text in zip(frame["lat"], frame["lon"], frame["text"])]


def rank_candidates(
    frame: pl.DataFrame,
    scorer: RewardScorer,
    open_query: OpenImage,
    open_gallery: OpenImage,
    top: Mapping[str, int] = DEFAULT_TOP,
    num_negatives: int = 5,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> tuple[pl.DataFrame, RankingReport]:
    """Predictions for every query of the candidates table, and what had to be skipped.

    `progress(done, total)` is called after each query.
    """
    scored, negatives = select_candidates(frame, top, num_negatives)
    total = scored["query_id"].n_unique()
    negatives_by_query = negatives.partition_by("query_id", as_dict=True, include_key=False)
    report = RankingReport()
    rows: dict[str, list] = {name: [] for name in PREDICTION_COLUMNS}
    for (query_id,), candidates in scored.partition_by("query_id", as_dict=True, maintain_order=True).items():
        report.queries += 1
        try:
            query_photo = open_query(query_id)
        except (OSError, ValueError) as error:
            report.unreadable_queries.append((query_id, str(error)))
            progress(report.queries, total)
            continue
        keep, photos = [], []
        for uri in candidates["ref_uri"]:
            try:
                photo = None if uri is None else open_gallery(uri)
            except (OSError, ValueError):
                keep.append(False)
                continue
            keep.append(True)
            photos.append(photo)
        report.dropped_candidates += keep.count(False)
        candidates = candidates.filter(pl.Series(keep))
        if candidates.height:
            group = QueryGroup(
                query_photo=query_photo,
                candidates=_places(candidates),
                gallery_photos=photos,
                negatives=_places(negatives_by_query.get((query_id,), candidates.clear())),
            )
            rewards = scorer.rewards(group)
            best = int(np.argmax(rewards))
            rows["image_id"].append(query_id)
            rows["lat"].append(candidates["lat"][best])
            rows["lon"].append(candidates["lon"][best])
            rows["score"].append(float(rewards[best]))
            report.predicted += 1
        progress(report.queries, total)
    return pl.DataFrame(rows, schema=PREDICTION_COLUMNS), report


def ranking_photos(
    images: Path,
    images_index: Path | None = None,
    gallery: Path | None = None,
    gallery_index: Path | None = None,
    raw_photos: bool = False,
) -> tuple[OpenImage, OpenImage]:
    """The query and gallery photos as `geoloc ranker score` hands them to the processor: prepared as
    GeoRanker's evaluate.py prepares them unless `raw_photos` (see geoloc.rank.photos)."""
    from geoloc.rank.photos import GEORANKER_GALLERY, GEORANKER_QUERY, RAW, StorePhotos

    query_photos = StorePhotos(images, images_index, preparation=RAW if raw_photos else GEORANKER_QUERY)
    gallery_store = StorePhotos(gallery, gallery_index) if gallery else query_photos
    return query_photos, gallery_store.prepared(RAW if raw_photos else GEORANKER_GALLERY)


def score_file(
    candidates_path: Path,
    out: Path,
    *,
    images: Path,
    adapter: Path,
    base: str | None = None,
    gallery: Path | None = None,
    images_index: Path | None = None,
    gallery_index: Path | None = None,
    top: Mapping[str, int] = DEFAULT_TOP,
    num_negatives: int = 5,
    batch_size: int = 8,
    shared_prefix: bool = True,
    dtype: str = "float32",
    device: str | None = None,
    raw_photos: bool = False,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> RankingReport:
    """`geoloc ranker score`: load the reward model, rank every query's candidates, write predictions atomically.

    Query photos are `images/<query_id>`, gallery photos `gallery/<ref_uri>` (gallery defaults
    to images), each a folder or a tar with its offset index (see `StorePhotos`); the base
    model defaults to the one the adapter records. Photos are prepared as GeoRanker's
    evaluate.py prepares them (see geoloc.rank.photos) unless `raw_photos`.
    """
    import torch

    from geoloc.rank.model import ModelLoadError, adapter_base, load_processor, load_reward_model

    frame = read_candidates(candidates_path)
    base = base or adapter_base(adapter)
    if not base:
        raise ModelLoadError(f"{adapter}: the adapter does not record its base model; pass --base")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_reward_model(base, adapter, dtype=getattr(torch, dtype)).to(device)
    scorer = RewardScorer(model, load_processor(base), batch_size=batch_size, shared_prefix=shared_prefix)
    query_photos, gallery_photos = ranking_photos(images, images_index, gallery, gallery_index, raw_photos)
    predictions, report = rank_candidates(frame, scorer, query_photos, gallery_photos, top, num_negatives, progress)
    write_table(predictions, out)
    return report
