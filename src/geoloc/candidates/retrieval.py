"""Retrieval candidates: the gallery photos nearest to each query photo (source=retrieval), and reverse ones.

Reverse candidates (source=reverse) are the gallery photos nearest to the *negated* query
vector: our reading of G3's "dissimilar images", whose making G3's code does not show.
Their score is the inner product with the vector searched, -query . photo, so higher is
more dissimilar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from geoloc.candidates import CANDIDATE_SCHEMA
from geoloc.encode.backbone import Backbone
from geoloc.images import Photo
from geoloc.index import GalleryIndex


def retrieval_candidates(index: GalleryIndex, query_ids: list[str], vectors: np.ndarray, k: int,
                         source: str = "retrieval") -> pl.DataFrame:
    """k candidates per query at its nearest gallery photos, scored by inner product with the vector searched.

    The inner product is the cosine similarity for normalized backbones; G3's vectors
    give [-3, 3]. `source="reverse"` searches the negated query vectors.
    """
    if source not in ("retrieval", "reverse"):
        raise ValueError(f"source must be retrieval or reverse, not {source!r}")
    scores, rows = index.search(-vectors if source == "reverse" else vectors, k)
    found = rows >= 0
    query_rows, ranks = np.nonzero(found)
    gallery = index.gallery[rows[found]]
    return pl.DataFrame({
        "query_id": pl.Series(np.asarray(query_ids, dtype=object)[query_rows], dtype=pl.Utf8),
        "source": source,
        "rank": ranks.astype(np.int32),
        "lat": gallery["lat"],
        "lon": gallery["lon"],
        "score": scores[found].astype(np.float64),
        "text": gallery["text"],
        "ref_uri": gallery["uri"],
    }, schema=CANDIDATE_SCHEMA)


@dataclass(frozen=True)
class Retrieved:
    """`geoloc retrieve`'s result: the candidates, every photo's vector (NaN rows where unreadable) and problem."""

    candidates: pl.DataFrame
    vectors: np.ndarray
    problems: list[str | None]


def retrieve_photos(photos: list[Photo], index: GalleryIndex, backbone: Backbone, k: int, reverse: int = 0,
                    batch_size: int = 64, on_progress: Callable[[int], None] = lambda done: None) -> Retrieved:
    """Embed the photos, then their k nearest gallery photos (and `reverse` reverse ones) as candidates."""
    from geoloc.encode import embed_batches
    from geoloc.images.discovery import photos_reader

    vectors, problems = embed_batches(*photos_reader(photos), backbone, batch_size, on_progress=on_progress)
    readable = [row for row, problem in enumerate(problems) if problem is None]
    query_ids = [photos[row].query_id for row in readable]
    table = retrieval_candidates(index, query_ids, vectors[readable], k)
    if reverse:
        table = pl.concat([table, retrieval_candidates(index, query_ids, vectors[readable], reverse,
                                                       source="reverse")])
    return Retrieved(table, vectors, problems)
