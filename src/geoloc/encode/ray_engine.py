"""`geoloc embed --engine ray`: a Ray Data pipeline of CPU tasks and GPU actors.

The parts still missing are cut into the same batches the local engine makes
(`batch_size` consecutive photos of a part), one Dataset row per batch. CPU tasks read
and preprocess each batch through `prepare_photo` (photos opened through their catalog
store, never unpacked); a pool of `actors` embedding actors, each holding the backbone
(on its own GPU when the cluster has GPUs), turns it into vectors through
`embed_prepared`; the driver puts each batch in its place and `embed_parts` writes a
part as soon as its last batch is in. Same functions, same batches: the same vectors
as a local run. Pixels and vectors travel as npy bytes.
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import torch

from geoloc.cluster import cluster_gpus, connect, import_ray, unique_rows
from geoloc.encode import EmbedSummary, ReadBytes, embed_parts, embed_prepared, prepare_photo
from geoloc.encode.backbone import Backbone, pixel_values
from geoloc.encode.loading import backbone_dim, load_backbone, load_image_processor

BATCHES_PER_BLOCK = 16
"""Batches per Ray Data block: the unit a CPU task reads, and redoes if its worker dies."""


def _to_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


@functools.lru_cache(maxsize=4)
def _processor(name: str) -> object:
    """The backbone's preprocessing, loaded once per worker process."""
    return load_image_processor(name)


def _prepare(batch: dict[str, np.ndarray], read_bytes: ReadBytes, backbone: str) -> dict[str, list]:
    """CPU stage: each row's photos read and preprocessed; the readable ones stacked as npy."""
    to_pixels = functools.partial(pixel_values, _processor(backbone))
    stacked, errors = [], []
    for sources, uris in zip(batch["sources"], batch["uris"]):
        prepared = [prepare_photo(read_bytes, location, to_pixels) for location in zip(sources, uris)]
        good = [pixels for pixels, _ in prepared if pixels is not None]
        stacked.append(_to_npy(torch.stack(good).numpy()) if good else b"")
        errors.append(json.dumps([problem for _, problem in prepared]))
    return {"part": list(batch["part"]), "start": list(batch["start"]), "pixels": stacked, "errors": errors}


class _Embedder:
    """GPU stage: an actor holding the backbone, embedding one prepared batch per call."""

    def __init__(self, load: Callable[[], Backbone]) -> None:
        self.backbone = load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        vectors = []
        for data, errors in zip(batch["pixels"], batch["errors"]):
            good = iter(torch.from_numpy(_from_npy(data))) if data else iter(())
            pixels = [next(good) if problem is None else None for problem in json.loads(errors)]
            vectors.append(_to_npy(embed_prepared(self.backbone, pixels)))
        return {"part": list(batch["part"]), "start": list(batch["start"]), "vectors": vectors,
                "errors": list(batch["errors"])}


def _batches(pending: list[tuple[int, pl.DataFrame]], batch_size: int) -> list[pa.Table]:
    """One row per batch (part, start, sources, uris), built column-wise; BATCHES_PER_BLOCK rows a table."""
    rows = pl.concat([
        chunk.select("source", "uri").with_row_index("start").with_columns(
            pl.lit(number, dtype=pl.Int64).alias("part"), (pl.col("start") // batch_size * batch_size).cast(pl.Int64))
        for number, chunk in pending
    ])
    table = rows.group_by("part", "start", maintain_order=True).agg(
        pl.col("source").alias("sources"), pl.col("uri").alias("uris")).to_arrow()
    return [table.slice(offset, BATCHES_PER_BLOCK) for offset in range(0, table.num_rows, BATCHES_PER_BLOCK)]


def embed_table_ray(
    items: pl.DataFrame,
    read_bytes: ReadBytes,
    backbone: str,
    out: Path,
    batch_size: int = 64,
    chunk_rows: int = 50_000,
    actors: int = 1,
    gpus_per_actor: float | None = None,
    device: str = "auto",
    dtype: str = "auto",
    address: str | None = None,
    on_progress: Callable[[int], None] = lambda done: None,
    load: Callable[[], Backbone] | None = None,
) -> EmbedSummary:
    """embed_table on a Ray cluster: the same folder, parts and vectors, resumable the same way.

    `gpus_per_actor` defaults to 1 when the cluster has GPUs, else 0 (CPU actors);
    `load` builds each actor's backbone (default: `load_backbone(backbone, device, dtype)`
    in the actor, so `auto` picks the actor's own GPU).
    """
    import_ray()  # a missing Ray is reported before any work starts
    load = load or functools.partial(load_backbone, backbone, device, dtype)
    dim = backbone_dim(backbone)

    def compute(pending: list[tuple[int, pl.DataFrame]]) -> Iterator[tuple[int, np.ndarray, list[str | None]]]:
        if not pending:
            return
        ray = connect(address)
        gpus = gpus_per_actor if gpus_per_actor is not None else (1.0 if cluster_gpus() else 0.0)
        dataset = (
            ray.data.from_arrow(_batches(pending, batch_size))
            .map_batches(_prepare, fn_args=(read_bytes, backbone), batch_size=1)
            .map_batches(_Embedder, fn_constructor_args=(load,), batch_size=1, num_gpus=gpus,
                         compute=ray.data.ActorPoolStrategy(size=actors))
        )
        sizes = {number: len(chunk) for number, chunk in pending}
        vectors: dict[int, np.ndarray] = {}  # only the parts with batches in flight
        problems: dict[int, list[str | None]] = {}
        filled = dict.fromkeys(sizes, 0)
        for row in unique_rows(dataset.iter_rows(), "part", "start"):
            number, start = int(row["part"]), int(row["start"])
            errors = json.loads(row["errors"])
            if number not in vectors:
                vectors[number] = np.full((sizes[number], dim), np.nan, dtype=np.float32)
                problems[number] = [None] * sizes[number]
            vectors[number][start:start + len(errors)] = _from_npy(row["vectors"])
            problems[number][start:start + len(errors)] = errors
            filled[number] += len(errors)
            on_progress(len(errors))
            if filled[number] == sizes[number]:
                yield number, vectors.pop(number), problems.pop(number)

    return embed_parts(items, backbone, dim, out, compute, chunk_rows, on_progress)
