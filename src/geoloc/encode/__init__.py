"""Embedding photos with a frozen backbone: batched, in DataLoader workers, resumable.

The output folder is the one `geoloc.embeddings` reads (meta.json and one Parquet part
per chunk of rows). A part is written atomically when its chunk is done, so a killed run
resumes at the first missing part, and a resumed run refuses to mix another backbone or
another list of photos into the same folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from PIL import Image

from geoloc.embeddings import check_meta, embeddings_meta, write_part
from geoloc.encode.backbone import Backbone
from geoloc.images.decoding import UNREADABLE, open_photo, unreadable_reason

ReadBytes = Callable[[str, str], bytes]
"""(source, uri) -> the photo's bytes: how a catalog row, or a plain file, is opened."""


def read_file(source: str, uri: str) -> bytes:
    """A ReadBytes for plain paths (the source is not needed)."""
    return Path(uri).read_bytes()


class CatalogImages:
    """A ReadBytes for catalog rows: each source's own store (folder, shards, tar).

    Every store is opened here, before any worker starts: a member index's lookup cache
    is built once, and forked or unpickled workers map the same files instead of each
    building its own.
    """

    def __init__(self, catalog_dir: Path) -> None:
        from geoloc.catalog.build import SOURCES_FILE, open_store

        self.catalog_dir = catalog_dir
        sources = json.loads((catalog_dir / SOURCES_FILE).read_text())
        self.stores = {source: open_store(catalog_dir, source) for source in sources}

    def __call__(self, source: str, uri: str) -> bytes:
        from geoloc.catalog.build import open_store

        if source not in self.stores:  # names the sources the catalog has
            self.stores[source] = open_store(self.catalog_dir, source)
        return self.stores[source].read_bytes(uri)


def prepare_photo(read_bytes: ReadBytes, location: tuple[str, str],
                  to_pixels: Callable[[list[Image.Image]], torch.Tensor]) -> tuple[torch.Tensor | None, str | None]:
    """One photo read, decoded and preprocessed; a failure becomes its reason, not an exception."""
    try:
        with open_photo(read_bytes(*location)) as image:
            return to_pixels([image])[0], None
    except UNREADABLE as error:
        return None, unreadable_reason(error)


def embed_prepared(backbone: Backbone, pixels: list[torch.Tensor | None]) -> np.ndarray:
    """One batch of prepared photos (rows, dim), the backbone's kind of features; NaN rows where a photo failed."""
    vectors = np.full((len(pixels), backbone.dim), np.nan, dtype=np.float32)
    good = [row for row, values in enumerate(pixels) if values is not None]
    if good:
        vectors[good] = backbone.embed_pixels(torch.stack([pixels[row] for row in good]))
    return vectors


class _Photos(torch.utils.data.Dataset):
    """Reads and preprocesses one photo per item (in DataLoader workers)."""

    def __init__(self, locations: list[tuple[str, str]], read_bytes: ReadBytes, backbone: Backbone) -> None:
        self.locations, self.read_bytes, self.backbone = locations, read_bytes, backbone

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, item: int) -> tuple[int, torch.Tensor | None, str | None]:
        return item, *prepare_photo(self.read_bytes, self.locations[item], self.backbone.pixel_values)


def _collate(batch: list) -> list:
    return batch


def embed_batches(
    locations: list[tuple[str, str]],
    read_bytes: ReadBytes,
    backbone: Backbone,
    batch_size: int = 64,
    workers: int = 0,
    on_progress: Callable[[int], None] = lambda done: None,
) -> tuple[np.ndarray, list[str | None]]:
    """Embeddings of the backbone's feature kind (rows, dim; NaN rows for failures) and one error (or None) per photo.

    Batches are `batch_size` consecutive photos; the Ray engine cuts the same batches,
    so both give the same vectors.
    """
    loader = torch.utils.data.DataLoader(
        _Photos(locations, read_bytes, backbone), batch_size=batch_size, num_workers=workers, collate_fn=_collate
    )
    vectors = np.full((len(locations), backbone.dim), np.nan, dtype=np.float32)
    problems: list[str | None] = [None] * len(locations)
    for batch in loader:
        rows = [item for item, _, _ in batch]
        vectors[rows] = embed_prepared(backbone, [pixels for _, pixels, _ in batch])
        for item, _, problem in batch:
            problems[item] = problem
        on_progress(len(batch))
    return vectors, problems


@dataclass(frozen=True)
class EmbedSummary:
    rows: int
    embedded: int
    failed: int
    parts_skipped: int


ComputeParts = Callable[[list[tuple[int, pl.DataFrame]]], Iterator[tuple[int, np.ndarray, list[str | None]]]]
"""An engine: for the (part number, rows with source and uri) it is given, (part number, vectors, errors), in any
order."""


def embed_parts(
    items: pl.DataFrame,
    backbone: str,
    dim: int,
    out: Path,
    compute: ComputeParts,
    chunk_rows: int = 50_000,
    on_progress: Callable[[int], None] = lambda done: None,
    feature_kind: str = "normalized",
    views: int = 1,
) -> EmbedSummary:
    """Every (image_id, uri, source) row into `out`, part by part, the parts a previous run finished skipped.

    `compute` embeds the missing parts (here, or on a Ray cluster); each part is
    written atomically by this function as soon as it comes back.
    """
    check_meta(out, embeddings_meta(backbone, dim, items["image_id"], chunk_rows, feature_kind, views))
    embedded = failed = skipped = 0
    chunks: dict[int, pl.DataFrame] = {}
    for number, start in enumerate(range(0, len(items), chunk_rows)):
        chunk = items.slice(start, chunk_rows)
        part = out / f"part-{number:05d}.parquet"
        if not part.is_file():
            chunks[number] = chunk
            continue
        done = pl.read_parquet(part, columns=["error"])
        embedded += done["error"].null_count()
        failed += len(done) - done["error"].null_count()
        skipped += 1
        on_progress(len(chunk))
    for number, vectors, problems in compute(list(chunks.items())):
        write_part(out, number, chunks[number]["image_id"], vectors, problems)
        failed += sum(problem is not None for problem in problems)
        embedded += len(problems) - sum(problem is not None for problem in problems)
    return EmbedSummary(rows=len(items), embedded=embedded, failed=failed, parts_skipped=skipped)


def embed_table(
    items: pl.DataFrame,
    read_bytes: ReadBytes,
    backbone: Backbone,
    out: Path,
    batch_size: int = 64,
    chunk_rows: int = 50_000,
    workers: int = 0,
    on_progress: Callable[[int], None] = lambda done: None,
) -> EmbedSummary:
    """Embed every (image_id, uri, source) row into `out` on this machine, in DataLoader workers (resumable)."""

    def compute(pending: list[tuple[int, pl.DataFrame]]) -> Iterator[tuple[int, np.ndarray, list[str | None]]]:
        for number, chunk in pending:
            locations = list(zip(chunk["source"].to_list(), chunk["uri"].to_list()))
            yield number, *embed_batches(locations, read_bytes, backbone, batch_size, workers, on_progress)

    return embed_parts(items, backbone.name, backbone.dim, out, compute, chunk_rows, on_progress,
                       backbone.feature_kind, backbone.views)
