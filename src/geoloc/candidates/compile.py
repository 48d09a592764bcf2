"""One candidate table per benchmark, from every generator's output.

Inputs: tables already in the candidate schema (retrieval, GeoCLIP, classifier), the
zero-shot answers of `geoloc candidates zeroshot`, and G3's published retrieval
results (`I.npy`: for each query of the benchmark, in the benchmark metadata's row
order, row numbers into the MP16-Pro metadata CSV). Every candidate but the zero-shot
answers gets place texts, in the form GeoRanker's prompts name a gallery photo: from the
gallery's metadata where it has them, else by offline reverse geocoding. Zero-shot
answers stay nameless, as in GeoRanker's prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.candidates import CANDIDATE_SCHEMA, SOURCES, conform_candidates
from geoloc.candidates.georanker import read_georanker_candidates
from geoloc.places import GALLERY_PLACE_COLUMNS, fill_place_texts, place_text
from geoloc.tables import TableError, as_float_column, read_table, select_layout


@dataclass(frozen=True)
class G3Retrieval:
    """G3's published retrieval results for one benchmark."""

    index: Path
    gallery: Path
    queries: Path
    top_k: int | None = None


@dataclass
class CompileSummary:
    candidates_per_source: dict[str, int] = field(default_factory=dict)
    zeroshot_unusable: int = 0
    """Zero-shot answers without usable coordinates: kept out of the table, never (0, 0)."""
    georanker_failed_zeroshot: int = 0
    """(0, 0) answers in GeoRanker's files: GeoRanker's mark of a failed answer."""
    georanker_failed_dropped: bool = False


def g3_retrieval_candidates(g3: G3Retrieval) -> pl.DataFrame:
    """Retrieval candidates from G3's I.npy, its gallery CSV and the benchmark's metadata."""
    try:
        neighbours = np.load(g3.index, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise TableError(f"{g3.index}: cannot read as a numeric .npy array: {error}") from error
    if neighbours.ndim != 2 or not np.issubdtype(neighbours.dtype, np.integer):
        raise TableError(f"{g3.index}: expected a 2-D integer array (queries x neighbours), got "
                         f"{neighbours.dtype} of shape {neighbours.shape}")
    queries = select_layout(read_table(g3.queries), g3.queries, [{"IMG_ID": "query_id"}, {"image_id": "query_id"}])
    if len(queries) != len(neighbours):
        raise TableError(f"{g3.index} has {len(neighbours)} rows but {g3.queries} has {len(queries)} queries; "
                         "they must be the same benchmark in the same order")
    if g3.top_k is not None:
        neighbours = neighbours[:, : g3.top_k]
    metadata = read_table(g3.gallery)
    places = [c for c in GALLERY_PLACE_COLUMNS if c in metadata.columns]
    texts = metadata.select(place_text(places) if places else pl.lit(None, pl.Utf8))
    gallery = select_layout(metadata, g3.gallery, [{"IMG_ID": "ref_uri", "LAT": "lat", "LON": "lon"}])
    gallery = gallery.with_columns(texts.to_series().alias("text"))
    for column in ("lat", "lon"):
        gallery = as_float_column(gallery, column, "ref_uri", g3.gallery)
    flat = neighbours.ravel()
    if flat.size and (flat.min() < 0 or flat.max() >= len(gallery)):
        raise TableError(f"{g3.index}: row numbers outside the gallery's {len(gallery)} rows")
    n_queries, k = neighbours.shape
    return gallery[flat].with_columns(
        pl.Series("query_id", np.repeat(queries["query_id"].to_numpy(), k)),
        pl.lit("retrieval").alias("source"),
        pl.Series("rank", np.tile(np.arange(k, dtype=np.int32), n_queries)),
        pl.lit(None, pl.Float64).alias("score"),
    ).select(list(CANDIDATE_SCHEMA))


def zeroshot_candidates(tables: list[tuple[pl.DataFrame, Path]]) -> tuple[pl.DataFrame, int]:
    """The usable answers of every zero-shot table as one source; and how many were unusable.

    Ranked per query by (rag, sample): the plain prompt's answers first, then each K of G3's
    prompt in increasing order, the order of G3's aggregated predictions (zs, 5_rag, 10_rag,
    15_rag). Tables written before `rag` existed count as K = 0.
    """
    parts = []
    for table, path in tables:
        missing = {"query_id", "sample", "lat", "lon"} - set(table.columns)
        if missing:
            raise TableError(f"{path}: not a zero-shot answers table: missing column(s) "
                             f"{', '.join(sorted(missing))}")
        for column in ("lat", "lon"):
            table = as_float_column(table, column, "query_id", path)
        rag = pl.col("rag").cast(pl.Int64).fill_null(0) if "rag" in table.columns else pl.lit(0, pl.Int64)
        parts.append(table.select(pl.col("query_id").cast(pl.Utf8), rag.alias("rag"),
                                  pl.col("sample").cast(pl.Int64), "lat", "lon"))
    answers = pl.concat(parts, how="vertical")
    twice = answers.filter(answers.select("query_id", "rag", "sample").is_duplicated())
    if len(twice):
        first = twice.row(0, named=True)
        raise TableError(f"{len(twice)} zero-shot answers share a (query, rag, sample), e.g. query "
                         f"{first['query_id']!r} rag {first['rag']} sample {first['sample']}: the same answers "
                         f"given twice? ({', '.join(str(path) for _, path in tables)})")
    usable = answers.filter(pl.col("lat").is_not_null() & pl.col("lon").is_not_null())
    usable = usable.sort("query_id", "rag", "sample").with_columns(
        pl.int_range(pl.len()).over("query_id").cast(pl.Int32).alias("rank"),
        pl.lit("zeroshot").alias("source"),
        pl.lit(None, pl.Float64).alias("score"),
        pl.lit(None, pl.Utf8).alias("text"),
        pl.lit(None, pl.Utf8).alias("ref_uri"),
    )
    return usable.select(list(CANDIDATE_SCHEMA)), len(answers) - len(usable)


def compile_candidates(
    candidate_tables: list[Path] = (),
    zeroshot_tables: list[Path] = (),
    g3: G3Retrieval | None = None,
    georanker_files: list[Path] = (),
    drop_failed_zeroshot: bool = False,
) -> tuple[pl.DataFrame, CompileSummary]:
    """Merge every input into one table in the candidate schema, sorted by query, source, rank.

    `georanker_files` are GeoRanker's compiled candidate CSVs; their (0, 0) zero-shot
    answers are kept (GeoRanker scored them) unless `drop_failed_zeroshot`.
    """
    summary = CompileSummary(georanker_failed_dropped=drop_failed_zeroshot)
    parts = [conform_candidates(read_table(path), path) for path in candidate_tables]
    for path in georanker_files:
        published = read_georanker_candidates(path, drop_failed_zeroshot)
        parts.append(published.table)
        summary.georanker_failed_zeroshot += published.failed_zeroshot
    if zeroshot_tables:
        table, summary.zeroshot_unusable = zeroshot_candidates([(read_table(path), path) for path in zeroshot_tables])
        parts.append(table)
    if g3 is not None:
        parts.append(g3_retrieval_candidates(g3))
    if not parts:
        raise TableError("nothing to compile: give candidate tables, zero-shot answers, G3 retrieval results "
                         "or GeoRanker's candidate files")
    merged = merge_candidates(parts)
    summary.candidates_per_source = dict(merged.group_by("source").len().iter_rows())
    return merged, summary


def merge_candidates(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Sources in the candidate schema as one table with place texts, sorted by query, source order, rank."""
    merged = pl.concat(parts, how="vertical")
    duplicated = merged.select("query_id", "source", "rank").is_duplicated()
    if duplicated.any():
        twice = merged.filter(duplicated)
        first = twice.row(0, named=True)
        raise TableError(f"{len(twice)} candidates share a (query, source, rank), e.g. query {first['query_id']!r} "
                         f"source {first['source']!r} rank {first['rank']}: the same source was given twice?")
    source_order = pl.col("source").replace_strict({s: i for i, s in enumerate(SOURCES)}, return_dtype=pl.Int8)
    return fill_place_texts(merged, where=pl.col("source") != "zeroshot").sort("query_id", source_order, "rank")
