"""How good are the candidates, before any ranking?

For each source and for all sources together: the accuracy if the first candidate were
taken (what the generator alone achieves) and if the best one were (the ceiling that
any ranker over these candidates can reach). The gap between the two is what a ranker
can gain. Photos of the truth file without a candidate count as misses.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from geoloc.candidates import SOURCES
from geoloc.evaluate import metrics_from_distances
from geoloc.geo import DistanceMethod, distance_km

UNION = "all sources"


def _distances_per_query(truth: pl.DataFrame, per_query: pl.DataFrame, column: str) -> np.ndarray:
    """One distance per truth photo (NaN where the photo has no candidate), in truth order."""
    aligned = truth.select("image_id").join(
        per_query.select(pl.col("query_id").alias("image_id"), column), on="image_id", how="left",
        maintain_order="left",
    )
    return aligned[column].cast(pl.Float64).fill_null(np.nan).to_numpy()


def candidate_report(
    candidates: pl.DataFrame, truth: pl.DataFrame, method: DistanceMethod = "great-circle", inclusive: bool = False
) -> pl.DataFrame:
    """One row per source (then the union) and pick ('first' or 'best') with the benchmark figures.

    `candidates` is in the candidate schema; `truth` has image_id, lat, lon (see
    geoloc.evaluate.load_truth). The union's first pick follows the SOURCES order.
    """
    scored = candidates.join(
        truth.select(pl.col("image_id").alias("query_id"), pl.col("lat").alias("true_lat"),
                     pl.col("lon").alias("true_lon")),
        on="query_id",
        how="inner",
    )
    scored = scored.with_columns(
        pl.Series("distance_km", distance_km(scored["true_lat"].to_numpy(), scored["true_lon"].to_numpy(),
                                             scored["lat"].to_numpy(), scored["lon"].to_numpy(), method=method)),
        pl.col("source").replace_strict({s: i for i, s in enumerate(SOURCES)}, return_dtype=pl.Int8)
        .alias("source_order"),
    )
    groups = [(source, scored.filter(pl.col("source") == source)) for source in SOURCES]
    groups = [(source, rows) for source, rows in groups if len(rows)] + [(UNION, scored)]
    report = []
    for source, rows in groups:
        per_query = rows.group_by("query_id").agg(
            pl.col("distance_km").sort_by("source_order", "rank").first().alias("first"),
            pl.col("distance_km").min().alias("best"),
            pl.len().alias("candidates"),
        )
        for pick in ("first", "best"):
            metrics = metrics_from_distances(_distances_per_query(truth, per_query, pick), inclusive=inclusive)
            del metrics["unknown"]
            report.append({"source": source, "pick": pick, "candidates_per_photo": per_query["candidates"].mean(),
                           **metrics})
    return pl.DataFrame(report)
