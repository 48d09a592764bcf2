"""Peak memory of `geoloc index build` on N vectors, run as a user runs it.

Writes N unit vectors (clustered like image embeddings, as in `benchmarks/retrieval.py`,
one part at a time) as an embeddings folder in `geoloc embed`'s format, and a
catalog with place columns, then runs `geoloc index build` in a child process. Its peak
resident set (mapped pages included: the kernel's ru_maxrss of the child) is measured,
and recall@10 of the built index against exact search over the same vectors. Prints one
JSON line: rows, dim, kind, nlist, nprobe, vectors_mb, embeddings_mb (the parts on disk),
index_mb (faiss.index on disk), gallery_mb (gallery.parquet), planned_peak_mb
(what the build printed), peak_rss_mb, build_s, recall_at_10.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.embeddings import embeddings_meta, write_part
from geoloc.index import GalleryIndex


def write_inputs(root: Path, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings folder and catalog; returns the queries and their exact top 10."""
    rng = np.random.default_rng(args.seed)
    ids = pl.Series("image_id", [f"{n:09d}" for n in range(args.rows)])
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.02, 0.05, size=args.clusters).astype(np.float32)
    picked = np.sort(rng.choice(args.rows, size=args.queries, replace=False))
    queries = np.empty((args.queries, args.dim), dtype=np.float32)
    best = np.full((args.queries, 10), -np.inf, dtype=np.float32)
    best_rows = np.full((args.queries, 10), -1, dtype=np.int64)
    embeddings = root / "embeddings"
    embeddings.mkdir()
    for number, start in enumerate(range(0, args.rows, args.chunk_rows)):
        count = min(args.chunk_rows, args.rows - start)
        members = rng.integers(0, args.clusters, count)
        chunk = centres[members] + rng.standard_normal((count, args.dim), dtype=np.float32) * spread[members, None]
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        write_part(embeddings, number, ids.slice(start, count), chunk, [None] * count)
        inside = (picked >= start) & (picked < start + count)
        seen = chunk[picked[inside] - start]
        queries[inside] = seen + rng.standard_normal(seen.shape, dtype=np.float32) * 0.02
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    (embeddings / "meta.json").write_text(json.dumps(embeddings_meta("random-unit", args.dim, ids, args.chunk_rows)))
    for number, start in enumerate(range(0, args.rows, args.chunk_rows)):  # exact top 10, a part at a time
        chunk = pl.read_parquet(embeddings / f"part-{number:05d}.parquet", columns=["embedding"])["embedding"]
        scores = queries @ chunk.to_numpy().T
        merged = np.concatenate([best, scores], axis=1)
        rows = np.concatenate([best_rows, np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)],
                              axis=1)
        top = np.argsort(-merged, axis=1)[:, :10]
        best, best_rows = np.take_along_axis(merged, top, 1), np.take_along_axis(rows, top, 1)
    catalog = root / "catalog"
    catalog.mkdir()
    pl.DataFrame({"image_id": ids, "uri": "img/" + ids + ".jpg", "lat": rng.uniform(-60, 70, args.rows),
                  "lon": rng.uniform(-180, 180, args.rows), "source": "photos", "city": "Lyon",
                  "country": "France"}).write_parquet(catalog / "catalog.parquet")
    return queries, best_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--kind", default="auto")
    parser.add_argument("--max-memory", default=None, help="passed on to `geoloc index build`")
    parser.add_argument("--nprobe", default=None, help="passed on to `geoloc index build`")
    parser.add_argument("--chunk-rows", type=int, default=50_000, help="rows per embeddings part, as `geoloc embed`")
    parser.add_argument("--clusters", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where the inputs go (default: a temporary "
                        "folder, deleted after)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="index-memory-", dir=args.workdir))
    try:
        queries, truth = write_inputs(root, args)
        command = [str(Path(sys.executable).with_name("geoloc")), "index", "build", "--embeddings",
                   str(root / "embeddings"), "--catalog", str(root / "catalog"), "--out", str(root / "index"),
                   "--kind", args.kind]
        for option, value in (("--max-memory", args.max_memory), ("--nprobe", args.nprobe)):
            command += [option, value] if value else []
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "1000"})
        build_s = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"geoloc index build failed:\n{done.stdout}\n{done.stderr}")
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        planned = re.search(r"a peak of about ([0-9.]+) (GiB|MiB)", done.stdout)
        gallery = GalleryIndex.load(root / "index")
        _, found = gallery.search(queries, 10)
        hits = [len(set(a) & set(b)) for a, b in zip(found, truth)]
        print(json.dumps({
            "rows": args.rows,
            "dim": args.dim,
            "kind": gallery.info["kind"],
            "nlist": gallery.info["nlist"],
            "nprobe": gallery.info["nprobe"],
            "vectors_mb": round(args.rows * args.dim * 4 / 2**20),
            "embeddings_mb": round(sum(p.stat().st_size for p in (root / "embeddings").iterdir()) / 2**20),
            "gallery_mb": round((root / "index" / "gallery.parquet").stat().st_size / 2**20),
            "index_mb": round((root / "index" / "faiss.index").stat().st_size / 2**20),
            "planned_peak_mb": round(float(planned[1]) * (1024 if planned[2] == "GiB" else 1)) if planned else None,
            "peak_rss_mb": round(peak_rss_mb),
            "build_s": round(build_s, 1),
            "recall_at_10": round(float(np.mean(hits)) / 10, 4),
        }))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
