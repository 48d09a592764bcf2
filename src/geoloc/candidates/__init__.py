"""Candidate locations for query photos, from every generator, in one table schema.

Schema (docs/architecture.md): query_id, source (retrieval / reverse / classifier /
geoclip / zeroshot / plonk), rank (0 = the generator's best), lat, lon, score (the generator's own, not
comparable across sources; null when it has none), text (place names), ref_uri (the
gallery photo behind a retrieval candidate, else null).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from geoloc.tables import TableError, describe_ids

SOURCES = ("retrieval", "reverse", "classifier", "geoclip", "zeroshot", "plonk")
"""Every known source, in the order a report lists them and the union's first pick follows.

The order is fixed, new sources go last: the light ranker's per-source features sit at
these positions in trained models. `reverse` is G3's dissimilar-image neighbours (`geoloc retrieve --reverse`)."""

CANDIDATE_SCHEMA = {
    "query_id": pl.Utf8,
    "source": pl.Utf8,
    "rank": pl.Int32,
    "lat": pl.Float64,
    "lon": pl.Float64,
    "score": pl.Float64,
    "text": pl.Utf8,
    "ref_uri": pl.Utf8,
}


def conform_candidates(frame: pl.DataFrame, path: Path | str) -> pl.DataFrame:
    """A table in the candidate schema: columns cast, optional ones added empty, order fixed.

    Raises TableError naming what is missing, unknown sources, or impossible coordinates.
    """
    required = ("query_id", "source", "rank", "lat", "lon")
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise TableError(f"{path}: not a candidates table: missing column(s) {', '.join(missing)}")
    for column in ("score", "text", "ref_uri"):
        if column not in frame.columns:
            frame = frame.with_columns(pl.lit(None).alias(column))
    try:
        frame = frame.select(pl.col(name).cast(dtype) for name, dtype in CANDIDATE_SCHEMA.items())
    except pl.exceptions.PolarsError as error:
        raise TableError(f"{path}: a candidates column has the wrong type: {error}") from error
    unknown = frame.filter(~pl.col("source").is_in(SOURCES))["source"].unique()
    if len(unknown):
        raise TableError(f"{path}: unknown candidate source(s) {describe_ids(unknown)}; known: "
                         f"{', '.join(SOURCES)}")
    impossible = frame.filter(
        pl.col("lat").is_null() | pl.col("lon").is_null() | (pl.col("lat").abs() > 90) | (pl.col("lon").abs() > 180)
    )
    if len(impossible):
        raise TableError(f"{path}: {len(impossible)} candidate(s) without valid coordinates, for queries "
                         f"{describe_ids(impossible['query_id'].unique(maintain_order=True))}")
    return frame
