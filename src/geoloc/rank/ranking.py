"""From a candidates table to predictions: each query's best-rewarded candidate.

Candidates (docs/architecture.md): query_id, source, rank, lat, lon, optional text and ref_uri.
Predictions: image_id (= query_id), lat, lon, score (the winning reward), the schema
`geoloc evaluate` reads. A query whose photo cannot be read gets no prediction and is
reported; a candidate whose gallery photo cannot be read is dropped and counted.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from geoloc.rank.photos import OpenImage
from geoloc.rank.prompts import Place
from geoloc.rank.scoring import QueryGroup, RewardScorer
from geoloc.tables import TableError, as_float_column, read_table, remove_folder, write_table

if TYPE_CHECKING:
    from geoloc.resumable import Share, Task

DEFAULT_TOP = {"retrieval": 10, "zeroshot": 5}
"""GeoRanker's default: the 10 best retrieval candidates (with gallery photos) and 5 zero-shot ones."""
REQUIRED_COLUMNS = ("query_id", "source", "rank", "lat", "lon")
PREDICTION_COLUMNS = {"image_id": pl.Utf8, "lat": pl.Float64, "lon": pl.Float64, "score": pl.Float64}
PART_QUERIES = 64
"""Queries per part of a resumable run: what a kill can lose, and a few minutes of a 7B model on one GPU."""


@dataclass
class RankingReport:
    queries: int = 0
    predicted: int = 0
    unreadable_queries: list[tuple[str, str]] = field(default_factory=list)
    dropped_candidates: int = 0
    written: bool = False
    """Whether this process wrote the output: not when other processes' parts are still pending (or
    another process wrote it)."""
    pending_parts: int = 0


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


QUERY_COLUMNS = {**PREDICTION_COLUMNS, "error": pl.Utf8, "dropped": pl.Int64}
"""What scoring one query leaves (a row per query): its prediction (null where it has none), why its photo
could not be read, how many of its candidates were dropped. A resumable run keeps these as its parts."""

QueryCandidates = tuple[str, pl.DataFrame]
"""One query's id and the candidates of it to score."""


def query_candidates(scored: pl.DataFrame) -> list[QueryCandidates]:
    """The candidates to score, one entry per query, in query_id order."""
    return [(query_id, frame) for (query_id,), frame in
            scored.partition_by("query_id", as_dict=True, maintain_order=True).items()]


def score_queries(
    queries: list[QueryCandidates],
    negatives_by_query: Mapping[tuple[str], pl.DataFrame],
    scorer: RewardScorer,
    open_query: OpenImage,
    open_gallery: OpenImage,
    on_query: Callable[[], None] = lambda: None,
) -> pl.DataFrame:
    """A QUERY_COLUMNS row per query, in the given order; `on_query()` after each."""
    rows: dict[str, list] = {name: [] for name in QUERY_COLUMNS}
    for query_id, candidates in queries:
        prediction, error, dropped = (None, None, None), None, 0
        try:
            query_photo = open_query(query_id)
        except (OSError, ValueError) as problem:
            query_photo, error = None, str(problem)
        if query_photo is not None:
            keep, photos = [], []
            for uri in candidates["ref_uri"]:
                try:
                    photo = None if uri is None else open_gallery(uri)
                except (OSError, ValueError):
                    keep.append(False)
                    continue
                keep.append(True)
                photos.append(photo)
            dropped = keep.count(False)
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
                prediction = (candidates["lat"][best], candidates["lon"][best], float(rewards[best]))
        for name, value in zip(QUERY_COLUMNS, (query_id, *prediction, error, dropped)):
            rows[name].append(value)
        on_query()
    return pl.DataFrame(rows, schema=QUERY_COLUMNS)


def predictions_of(results: pl.DataFrame) -> tuple[pl.DataFrame, RankingReport]:
    """The predictions in QUERY_COLUMNS rows and what had to be skipped."""
    predictions = results.filter(pl.col("lat").is_not_null()).select(list(PREDICTION_COLUMNS))
    unreadable = results.filter(pl.col("error").is_not_null())
    report = RankingReport(queries=results.height, predicted=predictions.height,
                           unreadable_queries=list(zip(unreadable["image_id"], unreadable["error"])),
                           dropped_candidates=int(results["dropped"].sum()))
    return predictions, report


def default_device(share: Share) -> str:
    """The process's own GPU under a launcher (LOCAL_RANK, else its rank, modulo the GPUs), else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', share.rank)) % torch.cuda.device_count()}"


def _code_identity() -> dict:
    """The versions and sources that make the prompts and the rewards: other code, other scores."""
    from importlib.metadata import version

    from geoloc.rank import model, photos, prompts, scoring
    from geoloc.resumable import file_digest

    modules = (model, photos, prompts, scoring)
    return {"versions": {name: version(name) for name in ("geoloc", "torch", "transformers", "peft")},
            "sources": {module.__name__: file_digest(Path(module.__file__)) for module in modules}}


def _where(path: Path | None) -> str | None:
    return None if path is None else str(path.resolve())


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
    part_queries: int = PART_QUERIES,
    restart: bool = False,
    share: Share | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    say: Callable[[str], None] = lambda line: None,
) -> RankingReport:
    """`geoloc ranker score`: load the reward model, rank every query's candidates, write predictions atomically.

    Query photos are `images/<query_id>`, gallery photos `gallery/<ref_uri>` (gallery defaults
    to images), each a folder or a tar with its offset index (see `StorePhotos`); the base
    model defaults to the one the adapter records. Photos are prepared as GeoRanker's
    evaluate.py prepares them (see geoloc.rank.photos) unless `raw_photos`.

    Resumable: every `part_queries` queries (in query_id order) are kept as a part in
    `work_folder(out)` with the settings that made them, so a rerun scores only the
    missing parts and refuses parts made with other settings (`restart` discards them).
    `share` (default: from RANK / WORLD_SIZE) scores every world-th part only; the process
    that finds every part done writes `out` and removes the folder.
    """
    import torch

    from geoloc.rank.model import ModelLoadError, adapter_base
    from geoloc.resumable import ResumeError, Share, Task, claim_work_folder, file_digest, model_identity, work_folder

    share = share or Share.from_env()
    frame = read_candidates(candidates_path)
    base = base or adapter_base(adapter)
    if not base:
        raise ModelLoadError(f"{adapter}: the adapter does not record its base model; pass --base")
    device = device or default_device(share)
    work = work_folder(out)
    if restart and share.world > 1:
        raise ResumeError(f"--restart under a launcher would discard other processes' parts: delete {work} "
                          "first, or restart from a single process")
    settings = {
        "candidates": file_digest(candidates_path), "images": _where(images), "images_index": _where(images_index),
        "gallery": _where(gallery), "gallery_index": _where(gallery_index), "adapter": model_identity(adapter),
        "base": model_identity(base), "top": dict(sorted(top.items())), "negatives": num_negatives,
        "batch_size": batch_size, "shared_prefix": shared_prefix, "raw_photos": raw_photos, "dtype": dtype,
        "device": torch.device(device).type, "part_queries": part_queries, "code": _code_identity(),
    }
    claim_work_folder(work, settings, restart)

    scored, negatives = select_candidates(frame, top, num_negatives)
    queries = query_candidates(scored)
    negatives_by_query = negatives.partition_by("query_id", as_dict=True, include_key=False)
    parts = [queries[start:start + part_queries] for start in range(0, len(queries), part_queries)]
    scorer = lazy_reward_scorer(base, adapter, dtype, device, batch_size, shared_prefix)
    query_photos, gallery_photos = ranking_photos(images, images_index, gallery, gallery_index, raw_photos)
    counted = _QueryCounter(progress)

    def score_part(number: int) -> pl.DataFrame:
        return score_queries(parts[number], negatives_by_query, scorer(), query_photos, gallery_photos, counted.one)

    tasks = [Task(f"part-{number:05d}", score_part, (number,)) for number in range(len(parts))]
    return _run_parts(tasks, [len(part) for part in parts], work, out, share, counted, say)


def lazy_reward_scorer(base: str, adapter: Path, dtype: str, device: str, batch_size: int,
                          shared_prefix: bool) -> Callable[[], RewardScorer]:
    """The reward scorer, loaded at the first call: a run with nothing left to score loads no model."""
    import torch

    from geoloc.rank.model import load_processor, load_reward_model

    @functools.cache
    def scorer() -> RewardScorer:
        model = load_reward_model(base, adapter, dtype=getattr(torch, dtype)).to(device)
        return RewardScorer(model, load_processor(base), batch_size=batch_size, shared_prefix=shared_prefix)

    return scorer


@dataclass
class _QueryCounter:
    """Queries scored of this process's total, reported after each through `progress(done, total)`."""

    progress: Callable[[int, int], None]
    done: int = 0
    total: int = 0

    def one(self) -> None:
        self.done += 1
        self.progress(self.done, self.total)


def _run_parts(tasks: list[Task], sizes: list[int], work: Path, out: Path, share: Share, counted: _QueryCounter,
               say: Callable[[str], None]) -> RankingReport:
    """Score this process's missing parts; the process that finds every part done writes `out`."""
    from geoloc.resumable import Workers, cache_paths, run_cached

    paths = cache_paths(tasks, work)
    mine = [number for number in range(len(tasks)) if share.takes(number)]
    counted.total = sum(sizes[number] for number in mine)
    counted.done = sum(sizes[number] for number in mine if paths[number].is_file())
    if counted.done:
        say(f"resuming: {counted.done} of {counted.total} queries already scored in {work}")
    counted.progress(counted.done, counted.total)
    frames = run_cached(tasks, work, Workers(1), None, share)
    if len(frames) < len(tasks):  # other processes' parts: written meanwhile, or not yet
        pending = sum(not path.is_file() for path in paths)
        if pending:
            return RankingReport(pending_parts=pending)
        try:
            frames = [pl.read_parquet(path) for path in paths]
        except FileNotFoundError:  # another process found them all done too, and has written `out`
            return RankingReport()
    predictions, report = predictions_of(pl.concat(frames) if frames else pl.DataFrame(schema=QUERY_COLUMNS))
    write_table(predictions, out)
    remove_folder(work)
    report.written = True
    return report
