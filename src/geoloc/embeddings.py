"""The embeddings folder `geoloc embed` writes, read part by part or row by row (no torch needed).

The folder holds `meta.json` (backbone, dimension, rows, chunk size, a fingerprint of
the ids being embedded (`geoloc.tables.ids_digest`), the kind of features: see FEATURE_KINDS) and one
Parquet part per chunk of rows (`part-00000.parquet`: image_id, embedding as a fixed-size float32 array,
error; a failed photo's embedding is null). Readers that need a few rows of millions
filter them in the Parquet scan, and the index build streams one part at a time, so no
reader holds more than it returns plus one part.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.errors import InputError
from geoloc.tables import describe_ids, ids_digest, rows_of, write_table, write_text

FEATURE_KINDS = {
    "normalized": "L2-normalized features through the backbone's own processor (retrieval, index, classifier)",
    "raw": "the backbone's raw features through its own processor (what GeoCLIP's predict feeds its MLP)",
    "raw-geoclip-train": "raw features through GeoCLIP's training preprocessing (resize 256, centre crop 224, "
                         "ImageNet mean and std), what GeoCLIP's MLP is trained on",
}
"""What the `embedding` column holds; meta.json's `feature_kind` (folders without one are `normalized`)."""


class EmbeddingsError(InputError):
    """An embeddings folder does not match the run, or is not one."""


def embeddings_meta(backbone: str, dim: int, ids: pl.Series, chunk_rows: int,
                    feature_kind: str = "normalized", views: int = 1) -> dict:
    """What a folder's embeddings were made of: a resumed run must match it.

    `dim` is a row's width: with several augmented `views` per photo, views x the backbone's size.
    """
    return {"backbone": backbone, "dim": dim, "rows": len(ids), "chunk_rows": chunk_rows, "ids": ids_digest(ids),
            "feature_kind": feature_kind, "views": views}


def feature_kind(meta: dict) -> str:
    return meta.get("feature_kind", "normalized")


def require_features(meta: dict, folder: Path, kinds: tuple[str, ...], consumer: str, dim: int | None = None) -> None:
    """Refuse embeddings a consumer cannot use: another kind of features, or another backbone's size."""
    kind = feature_kind(meta)
    if kind not in kinds:
        raise EmbeddingsError(f"{folder} holds {kind} features ({FEATURE_KINDS.get(kind, 'unknown kind')}); "
                              f"{consumer} needs {' or '.join(kinds)}: make them with "
                              f"`geoloc embed --features {kinds[0]}`")
    views = int(meta.get("views", 1))
    if dim is not None and int(meta["dim"]) != dim * views:
        raise EmbeddingsError(f"{folder} holds {int(meta['dim']) // views}-dimensional features of "
                              f"{meta.get('backbone')}; {consumer} needs {dim} (CLIP ViT-L/14's projection)")


def check_meta(out: Path, meta: dict) -> None:
    """Write meta.json, or refuse a folder holding another run's embeddings."""
    from geoloc.resumable import record_settings

    changed = record_settings(out / "meta.json", meta)
    if changed:
        raise EmbeddingsError(f"{out} holds another run's embeddings (different {', '.join(changed)}); "
                              "use a new --out folder or delete this one")


def write_part(out: Path, number: int, ids: pl.Series, vectors: np.ndarray, problems: list[str | None]) -> None:
    """One chunk's part: a failed photo's row keeps its id and error, its embedding is null."""
    table = pl.DataFrame({
        "image_id": ids,
        "embedding": pl.Series(vectors, dtype=pl.Array(pl.Float32, vectors.shape[1])),
        "error": pl.Series(problems, dtype=pl.Utf8),
    }).with_columns(pl.when(pl.col("error").is_null()).then(pl.col("embedding")).alias("embedding"))
    write_table(table, out / f"part-{number:05d}.parquet")


@dataclass(frozen=True)
class EmbeddingParts:
    """A complete embeddings folder: its meta.json and its parts, in row order."""

    folder: Path
    meta: dict
    parts: list[Path]

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def ids(self) -> pl.Series:
        """The ids of the successfully embedded photos, in row order (the vectors are not read)."""
        return self._scan().select("image_id").collect()["image_id"]

    def iter_parts(self) -> Iterator[tuple[pl.Series, np.ndarray]]:
        """(ids, vectors) of each part's successfully embedded photos, one part in memory at a time."""
        for part in self.parts:
            yield self.read_part(part)

    def read_part(self, part: Path) -> tuple[pl.Series, np.ndarray]:
        """(ids, vectors) of one part's successfully embedded photos."""
        return self._vectors(_successful(pl.scan_parquet(part)).select("image_id", "embedding").collect())

    def rows_of_ids(self, ids: pl.Series) -> tuple[pl.Series, np.ndarray]:
        """(ids found, their vectors) among `ids`, in the folder's order: only those rows are read."""
        wanted = ids.cast(pl.Utf8).drop_nulls().unique()
        found = (self._scan().filter(pl.col("image_id").is_in(wanted.implode()))
                 .select("image_id", "embedding").collect())
        return self._vectors(found)

    def _scan(self) -> pl.LazyFrame:
        if not self.parts:
            return pl.LazyFrame(schema={"image_id": pl.Utf8, "embedding": pl.Array(pl.Float32, self.dim),
                                        "error": pl.Utf8})
        return _successful(pl.scan_parquet(self.parts))

    def _vectors(self, table: pl.DataFrame) -> tuple[pl.Series, np.ndarray]:
        if not len(table):
            return table["image_id"], np.empty((0, self.dim), dtype=np.float32)
        return table["image_id"], np.ascontiguousarray(table["embedding"].to_numpy(), dtype=np.float32)


def _successful(scan: pl.LazyFrame) -> pl.LazyFrame:
    return scan.filter(pl.col("error").is_null())


def open_embeddings(folder: Path) -> EmbeddingParts:
    """An embeddings folder checked complete; nothing but meta.json is read yet."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise EmbeddingsError(f"{folder}: not an embeddings folder (no meta.json); make one with `geoloc embed`")
    meta = json.loads(meta_path.read_text())
    parts = sorted(folder.glob("part-*.parquet"))
    expected = -(-meta["rows"] // meta["chunk_rows"]) if meta["rows"] else 0
    if len(parts) != expected:
        raise EmbeddingsError(f"{folder}: {len(parts)} of {expected} parts are done; run `geoloc embed` again to "
                              "finish")
    return EmbeddingParts(folder, meta, parts)


def read_embeddings(folder: Path) -> tuple[dict, pl.Series, np.ndarray]:
    """meta.json, the ids and the (rows, dim) vectors of every successfully embedded photo.

    The vectors are filled part by part into one array: the whole folder is held once.
    """
    embeddings = open_embeddings(folder)
    ids = embeddings.ids()
    vectors = np.empty((len(ids), embeddings.dim), dtype=np.float32)
    start = 0
    for part_ids, part_vectors in embeddings.iter_parts():
        vectors[start:start + len(part_ids)] = part_vectors
        start += len(part_ids)
    return embeddings.meta, ids, vectors


def write_embeddings(folder: Path, ids: pl.Series | list[str], vectors: np.ndarray, backbone: str,
                     chunk_rows: int = 50_000, feature_kind: str = "normalized") -> None:
    """Write vectors made elsewhere (a synthetic world, another tool) in the layout `read_embeddings` reads.

    Parts first, meta.json last, each atomically, so a folder with meta.json is complete.
    """
    ids = pl.Series("image_id", ids, dtype=pl.Utf8)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise EmbeddingsError(f"expected one vector per id ({len(ids)}), got an array of shape {vectors.shape}")
    for number, start in enumerate(range(0, len(ids), chunk_rows)):
        chunk = ids.slice(start, chunk_rows)
        write_part(folder, number, chunk, vectors[start:start + chunk_rows], [None] * len(chunk))
    meta = embeddings_meta(backbone, vectors.shape[1], ids, chunk_rows, feature_kind)
    write_text(folder / "meta.json", json.dumps(meta, indent=2))


def embeddings_of(folder: Path, keys: pl.Series) -> tuple[dict, np.ndarray, np.ndarray]:
    """meta.json, the vectors of the distinct `keys` found, and each key's row among them (-1: none).

    Only the rows some key names are read, however large the folder.
    """
    embeddings = open_embeddings(folder)
    found, vectors = embeddings.rows_of_ids(keys)
    return embeddings.meta, vectors, rows_of(keys.cast(pl.Utf8), found)


def embeddings_by_id(folder: Path, ids: pl.Series, what: str) -> np.ndarray:
    """The vectors of `ids` in their order, from an embeddings folder; an error names ids it lacks."""
    ids = ids.cast(pl.Utf8)
    _, vectors, rows = embeddings_of(folder, ids)
    missing = ids.filter(pl.Series(rows < 0))
    if len(missing):
        raise EmbeddingsError(f"{folder}: no embedding for {len(missing)} {what}: {describe_ids(missing)}")
    return vectors[rows]
