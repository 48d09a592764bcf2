"""Retrieval candidates: the gallery photos nearest to each query photo (source=retrieval)."""

from __future__ import annotations

import numpy as np
import polars as pl

from geoloc.candidates import CANDIDATE_SCHEMA
from geoloc.index import GalleryIndex


def retrieval_candidates(index: GalleryIndex, query_ids: list[str], vectors: np.ndarray, k: int) -> pl.DataFrame:
    """k candidates per query at its nearest gallery photos, scored by cosine similarity."""
    scores, rows = index.search(vectors, k)
    found = rows >= 0
    query_rows, ranks = np.nonzero(found)
    gallery = index.gallery[rows[found]]
    return pl.DataFrame({
        "query_id": pl.Series(np.asarray(query_ids, dtype=object)[query_rows], dtype=pl.Utf8),
        "source": "retrieval",
        "rank": ranks.astype(np.int32),
        "lat": gallery["lat"],
        "lon": gallery["lon"],
        "score": scores[found].astype(np.float64),
        "text": gallery["text"],
        "ref_uri": gallery["uri"],
    }, schema=CANDIDATE_SCHEMA)
