"""The searchable gallery: a FAISS index over normalized embeddings, with a Parquet table
of what each row is (image_id, uri, lat, lon, text).

Inner product on L2-normalized vectors is cosine similarity. Small galleries get an
exact index; millions get an inverted-file index (IVF, exact distances inside the
probed lists) or HNSW, or IVF-PQ when memory is short; the memory each will need is
known before anything is built. Files: `faiss.index` (FAISS's own binary format, no
pickle), `gallery.parquet`, `index.json`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.places import GALLERY_PLACE_COLUMNS, fill_place_texts, place_text
from geoloc.tables import write_table

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
EXACT_UP_TO = 200_000
"""Below this many photos an exact search is fast enough; above it, auto picks IVF."""
GALLERY_COLUMNS = ("image_id", "uri", "lat", "lon", "text")


@dataclass(frozen=True)
class IndexPlan:
    kind: str
    rows: int
    dim: int
    nlist: int = 0
    nprobe: int = 0
    hnsw_m: int = 32
    pq_m: int = 0

    def memory_bytes(self) -> int:
        """What the index will hold in memory once built (vectors, lists, graph links)."""
        vectors = self.rows * self.dim * 4
        if self.kind == "flat":
            return vectors
        if self.kind == "ivf":
            return vectors + self.rows * 8 + self.nlist * self.dim * 4
        if self.kind == "hnsw":
            return vectors + self.rows * self.hnsw_m * 2 * 4
        return self.rows * (self.pq_m + 8) + self.nlist * self.dim * 4 + 256 * self.dim * 4


def plan_index(
    rows: int, dim: int, kind: str = "auto", nlist: int | None = None, nprobe: int | None = None
) -> IndexPlan:
    """Choose the index and its parameters for a gallery of `rows` vectors."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    if kind == "auto":
        kind = "flat" if rows <= EXACT_UP_TO else "ivf"
    if kind in ("ivf", "ivfpq"):
        # About sqrt(rows) lists (a power of two), each with the 39+ training points FAISS wants.
        lists = nlist or max(1, min(rows // 39, 2 ** round(math.log2(max(1.0, math.sqrt(rows))))))
        probes = nprobe or int(np.clip(lists // 64, 1, 64))
        pq_m = next((m for m in (96, 64, 48, 32, 24, 16, 8, 4, 2, 1) if dim % m == 0), 1) if kind == "ivfpq" else 0
        return IndexPlan(kind, rows, dim, nlist=lists, nprobe=min(probes, lists), pq_m=pq_m)
    return IndexPlan(kind, rows, dim)


def build_faiss_index(vectors: np.ndarray, plan: IndexPlan, seed: int = 0):
    """Build and fill the planned index (training IVF quantizers on a sample)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if plan.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif plan.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, plan.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.hnsw.efSearch = 64
    else:
        quantizer = faiss.IndexFlatIP(dim)
        if plan.kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, plan.nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexIVFPQ(quantizer, dim, plan.nlist, plan.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        sample_size = min(len(vectors), max(plan.nlist * 64, 10_000))
        sample = np.random.default_rng(seed).choice(len(vectors), size=sample_size, replace=False)
        index.train(vectors[np.sort(sample)])
        index.nprobe = plan.nprobe
    index.add(vectors)
    return index


@dataclass
class GalleryIndex:
    """A loaded gallery: search with normalized query vectors, read rows of `gallery`."""

    index: object
    gallery: pl.DataFrame
    info: dict

    @classmethod
    def load(cls, folder: str | Path) -> GalleryIndex:
        import faiss

        folder = Path(folder)
        missing = [name for name in ("faiss.index", "gallery.parquet", "index.json") if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: not a gallery index (missing {', '.join(missing)}); "
                                    "build one with `geoloc index build`")
        info = json.loads((folder / "index.json").read_text())
        index = faiss.read_index(str(folder / "faiss.index"))
        if info.get("nprobe"):
            faiss.extract_index_ivf(index).nprobe = info["nprobe"]
        return cls(index=index, gallery=pl.read_parquet(folder / "gallery.parquet"), info=info)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities and gallery rows (queries, k); row -1 where fewer than k exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.info["dim"]:
            raise ValueError(f"queries must have shape (n, {self.info['dim']}), got {queries.shape}; "
                             f"was the gallery embedded with another backbone ({self.info.get('backbone')})?")
        scores, rows = self.index.search(queries, k)
        return scores, rows


def save_gallery_index(index, gallery: pl.DataFrame, plan: IndexPlan, folder: Path, backbone: str | None) -> None:
    """Write the three files, each atomically; index.json last, so its presence means done."""
    import faiss

    folder.mkdir(parents=True, exist_ok=True)
    write_table(gallery.select(GALLERY_COLUMNS), folder / "gallery.parquet")
    partial = folder / f".faiss.index.{os.getpid()}.part"
    faiss.write_index(index, str(partial))
    os.replace(partial, folder / "faiss.index")
    info = {**asdict(plan), "backbone": backbone, "metric": "inner_product"}
    partial = folder / f".index.json.{os.getpid()}.part"
    partial.write_text(json.dumps(info, indent=2))
    os.replace(partial, folder / "index.json")


def gallery_table(ids: pl.Series, catalog: pl.DataFrame) -> pl.DataFrame:
    """Coordinates, uri and place text of each embedded photo, in the embeddings' row order.

    Place text comes from the catalog's place columns (MP16-Pro's neighbourhood ...
    country) when it has them, else from offline reverse geocoding.
    """
    places = [c for c in GALLERY_PLACE_COLUMNS if c in catalog.columns]
    catalog = catalog.with_columns(place_text(places).alias("text") if places else pl.lit(None, pl.Utf8).alias("text"))
    rows = pl.DataFrame({"image_id": ids}).join(
        catalog.select("image_id", "uri", "lat", "lon", "text"), on="image_id", how="left", maintain_order="left"
    )
    unmatched = rows.filter(pl.col("lat").is_null())["image_id"]
    if len(unmatched):
        raise ValueError(f"{len(unmatched)} embedded photo(s) are not in the catalog, e.g. {unmatched[0]!r}: "
                         "were the embeddings made from another catalog?")
    return fill_place_texts(rows)
