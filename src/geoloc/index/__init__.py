"""The searchable gallery: a FAISS index over normalized embeddings, with a Parquet table
of what each row is (image_id, uri, lat, lon, text).

Inner product on L2-normalized vectors is cosine similarity. Small galleries get an
exact index; millions get an inverted-file index (IVF, exact distances inside the
probed lists) or HNSW, or, when memory is short, IVF over 8-bit scalar-quantized
vectors (IVF-SQ) or PQ codes (IVF-PQ). The memory each will need, and the build's peak,
are known before anything is built; the build streams the embedding parts. Files:
`faiss.index` (FAISS's own binary format, no pickle), `gallery.parquet`, `index.json`,
written into a new folder that replaces the old one whole.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.places import GALLERY_PLACE_COLUMNS, fill_place_texts, place_text
from geoloc.tables import replace_durably, replace_folder_durably, write_table, write_text

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw", "ivfsq", "ivfpq")
EXACT_UP_TO = 200_000
"""Below this many photos an exact search is fast enough; above it, auto picks IVF."""
COMPRESSED = ("ivfsq", "ivfpq")
"""What auto falls back to, in this order, when the vectors themselves do not fit in memory."""
GALLERY_COLUMNS = ("image_id", "uri", "lat", "lon", "text")
GALLERY_CATALOG_COLUMNS = ("image_id", "uri", "lat", "lon", *GALLERY_PLACE_COLUMNS)
"""The catalog columns a gallery is made of (place columns where the catalog has them)."""
INDEX_FILES = ("faiss.index", "gallery.parquet", "index.json")
WORKING_COPIES = 3
"""A part (or the training sample) is held about this many times while FAISS takes it in
(the Parquet buffers, the float32 array, FAISS's residuals or codes of it)."""


@dataclass(frozen=True)
class IndexPlan:
    kind: str
    rows: int
    dim: int
    nlist: int = 0
    nprobe: int = 0
    hnsw_m: int = 32
    pq_m: int = 0
    part_rows: int = 0
    """Rows of the largest batch added at once (an embeddings part)."""

    def memory_bytes(self) -> int:
        """What the index will hold in memory once built (vectors or codes, lists, graph links)."""
        vectors = self.rows * self.dim * 4
        centroids = self.nlist * self.dim * 4
        if self.kind == "flat":
            return vectors
        if self.kind == "ivf":
            return vectors + self.rows * 8 + centroids
        if self.kind == "hnsw":
            return vectors + self.rows * self.hnsw_m * 2 * 4
        if self.kind == "ivfsq":
            return self.rows * (self.dim + 8) + centroids + 2 * self.dim * 4
        return self.rows * (self.pq_m + 8) + centroids + 256 * self.dim * 4

    def sample_rows(self) -> int:
        """Vectors the coarse quantizer (and the SQ ranges or PQ codebooks) are trained on; 0 when untrained."""
        return min(self.rows, max(self.nlist * 64, 10_000)) if self.nlist else 0

    def peak_bytes(self) -> int:
        """The build's expected peak: training (the sample, a second copy of its size for the residuals or
        k-means at work, and the part being read), or the filled index with each row's list (IVF kinds)
        and one part at work, whichever is larger."""
        part = WORKING_COPIES * min(self.part_rows or self.rows, self.rows) * self.dim * 4
        training = 2 * self.sample_rows() * self.dim * 4 + part
        assignments = self.rows * 8 if self.nlist else 0
        return max(training, self.memory_bytes() + assignments + part)


def plan_index(
    rows: int, dim: int, kind: str = "auto", nlist: int | None = None, nprobe: int | None = None,
    max_memory: int | None = None, part_rows: int = 0,
) -> IndexPlan:
    """Choose the index and its parameters for a gallery of `rows` vectors added `part_rows` at a time.

    With `max_memory` (bytes), auto keeps the vectors (exact or IVF) while the build's peak
    fits, else picks the first compressed kind that fits (scalar-quantized, then PQ codes),
    else the smallest.
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    if kind != "auto":
        return _plan(rows, dim, kind, nlist, nprobe, part_rows)
    plans = [_plan(rows, dim, choice, nlist, nprobe, part_rows)
             for choice in ("flat" if rows <= EXACT_UP_TO else "ivf", *COMPRESSED)]
    if max_memory is None:
        return plans[0]
    return next((plan for plan in plans if plan.peak_bytes() <= max_memory), plans[-1])


def _plan(rows: int, dim: int, kind: str, nlist: int | None, nprobe: int | None, part_rows: int) -> IndexPlan:
    if kind.startswith("ivf"):
        # About 4 sqrt(rows) lists (a power of two; FAISS advises 4 to 16 sqrt(rows)), each with the 39+
        # training points FAISS wants, and 1/256 of them probed: at 1 M rows, 4096 lists and 16 probed found
        # 100% of the exact top 10 at 41 times exact search's rate, where sqrt(rows) lists scanned 4 times
        # as many vectors per query for 98% (benchmarks/retrieval.py).
        lists = nlist or max(1, min(rows // 39, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(rows))))))
        probes = nprobe or int(np.clip(lists // 256, 1, 64))
        pq_m = next((m for m in (96, 64, 48, 32, 24, 16, 8, 4, 2, 1) if dim % m == 0), 1) if kind == "ivfpq" else 0
        return IndexPlan(kind, rows, dim, nlist=lists, nprobe=min(probes, lists), pq_m=pq_m, part_rows=part_rows)
    return IndexPlan(kind, rows, dim, part_rows=part_rows)


def available_memory() -> int:
    """Bytes this machine can give a build now: MemAvailable on Linux, else the physical memory."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_bytes() -> int:
    """This process's peak resident set so far (the interpreter and its libraries before a build starts)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def parse_bytes(text: str) -> int:
    """'32GB', '512M', '1.5 GiB' or a plain number of bytes, as bytes (K, M, G, T are powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a memory size; write e.g. 32GB, 512MB or a number of bytes")
    return int(float(match[1]) * 1024 ** "_KMGT".index((match[2] or "_").upper()))


def empty_faiss_index(plan: IndexPlan):
    """The planned index, untrained and empty."""
    import faiss

    if plan.kind == "flat":
        return faiss.IndexFlatIP(plan.dim)
    if plan.kind == "hnsw":
        index = faiss.IndexHNSWFlat(plan.dim, plan.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.hnsw.efSearch = 64
        return index
    quantizer = faiss.IndexFlatIP(plan.dim)
    if plan.kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, plan.dim, plan.nlist, faiss.METRIC_INNER_PRODUCT)
    elif plan.kind == "ivfsq":
        index = faiss.IndexIVFScalarQuantizer(quantizer, plan.dim, plan.nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, plan.dim, plan.nlist, plan.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = plan.nprobe
    return index


Batches = Callable[[], Iterable[np.ndarray]]
"""Each call starts a new pass over the gallery's vectors, batch by batch, always in the same order."""


def build_streamed(batches: Batches, plan: IndexPlan, seed: int = 0):
    """Build and fill the planned index from batches of vectors, holding one batch (or the sample) at a time.

    Trained kinds read the batches three times: for a random sample of rows to train on, to
    assign every row to its list, and to add every row in order.
    """
    import faiss

    index = empty_faiss_index(plan)
    if plan.sample_rows():
        chosen = np.random.default_rng(seed).choice(plan.rows, size=plan.sample_rows(), replace=False)
        index.train(_take_rows(batches(), np.sort(chosen), plan.dim))
    if plan.kind == "flat":  # filled in place: growing FAISS's vector part by part would copy it as it doubles
        index.codes.resize(plan.rows * plan.dim * 4)
        vectors = faiss.rev_swig_ptr(index.codes.data(), plan.rows * plan.dim * 4).view(np.float32)
        start = 0
        for batch in batches():
            vectors[start * plan.dim:(start + len(batch)) * plan.dim] = np.asarray(batch, np.float32).ravel()
            start += len(batch)
        index.ntotal = start
    elif plan.nlist:
        start = _add_to_sized_lists(index, batches)
    else:
        start = 0
        for batch in batches():
            index.add(np.ascontiguousarray(batch, dtype=np.float32))
            start += len(batch)
    if start != plan.rows:
        raise ValueError(f"the plan is for {plan.rows} rows, the batches held {start}")
    return index


def _add_to_sized_lists(index, batches: Batches) -> int:
    """Add every batch to the IVF lists, each list allocated once at its final length; returns the rows added.

    Lists grown batch by batch double as they fill: a list holds up to twice its rows while it
    grows, and the copies it outgrew seldom go back to the OS (2 M x 768 peaked 2.8 GB above
    the index). So a first pass assigns each row to its list (the assignments are kept, 8 bytes
    a row), the lists are sized, and a second pass adds the rows with those assignments: the
    same lists, ids and codes as adding the batches one by one.
    """
    import faiss

    assigned = [index.quantizer.assign(np.ascontiguousarray(batch, dtype=np.float32), 1).ravel()
                for batch in batches()]
    counts = np.bincount(np.concatenate(assigned) if assigned else np.empty(0, np.int64), minlength=index.nlist)
    lists = faiss.downcast_InvertedLists(index.invlists)
    for list_no, count in enumerate(counts.tolist()):
        lists.resize(list_no, count)  # allocates the list; emptied again, it keeps that room
        lists.resize(list_no, 0)
    start = 0
    for batch, lists_of_rows in zip(batches(), assigned):
        vectors = np.ascontiguousarray(batch, dtype=np.float32)
        index.add_core(len(vectors), faiss.swig_ptr(vectors), None, faiss.swig_ptr(lists_of_rows))
        start += len(vectors)
    return start


def _take_rows(batches: Iterable[np.ndarray], rows: np.ndarray, dim: int) -> np.ndarray:
    """The vectors at the sorted global `rows`, gathered from the batches as they pass."""
    taken = np.empty((len(rows), dim), dtype=np.float32)
    start = 0
    for batch in batches:
        first, last = np.searchsorted(rows, [start, start + len(batch)])
        taken[first:last] = batch[rows[first:last] - start]
        start += len(batch)
    return taken


def build_faiss_index(vectors: np.ndarray, plan: IndexPlan, seed: int = 0):
    """Build and fill the planned index from vectors already in memory."""
    return build_streamed(lambda: [vectors], plan, seed)


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
        missing = [name for name in INDEX_FILES if not (folder / name).is_file()]
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
    """Write the three files into a new folder beside `folder`, then swap the whole folder in
    (`tables.replace_folder_durably`: a killed build leaves the previous index whole)."""
    import faiss

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not (folder / "index.json").is_file():
        raise FileExistsError(f"{folder} exists and is not a gallery index; choose another --out or empty it")

    def write(partial: Path) -> None:
        write_table(gallery.select(GALLERY_COLUMNS), partial / "gallery.parquet")
        replace_durably(partial / "faiss.index", lambda temporary: faiss.write_index(index, str(temporary)))
        info = {**asdict(plan), "backbone": backbone, "metric": "inner_product"}
        write_text(partial / "index.json", json.dumps(info, indent=2))

    replace_folder_durably(folder, write)


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
