"""Ingest speed: EXIF scanning against a plain Pillow loop, shard indexing against a plain read.

Prints one JSON line:
Workers are started once before timing (`workers_start_s`, a fixed cost per build).

- `exif_speedup`: files/s of the catalog's EXIF scanner (all cores, resumable chunks,
  each file read once, hashed and its GPS read) over a plain one-file-at-a-time loop
  (`Image.open(path).getexif().get_ifd(GPS)`) on the same files, both from the page cache.
- `shard_read_ratio`: bytes/s of the streaming shard index (id -> offset, length),
  shards indexed in parallel, over a plain sequential read of the same bytes.
- `shard_check_ratio`: the same with every image hashed and its header checked, as
  `geoloc catalog build` does.
- `index_peak_mib_small` / `index_peak_mib_large`: peak Python memory of indexing one
  shard of N and of 4N records: flat when the pass streams.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from datawriters import gps_block, write_files, write_shard  # noqa: E402

from geoloc.catalog.scan import scan_files  # noqa: E402
from geoloc.images import index_shard  # noqa: E402
from geoloc.resumable import Task, Workers, run_cached  # noqa: E402


def photos(count: int, size: tuple[int, int]) -> list[bytes]:
    """Distinct JPEGs of noisy pixels with a GPS block, like small camera photos."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    made = []
    for n in range(count):
        exif = Image.Exif()
        exif[ExifTags.Base.ImageDescription] = f"photo {n}"
        exif[ExifTags.IFD.GPSInfo] = gps_block(-60 + (n % 12000) / 100, -170 + (n % 34000) / 100)
        buffer = io.BytesIO()
        Image.fromarray(np.roll(base, n, axis=1)).save(buffer, "JPEG", quality=80, exif=exif.tobytes())
        made.append(buffer.getvalue())
    return made


def plain_exif_loop(root: Path, names: list[str]) -> int:
    found = 0
    for name in names:
        with Image.open(root / name) as image:
            found += bool(image.getexif().get_ifd(ExifTags.IFD.GPSInfo))
    return found


def plain_read(paths: list[Path]) -> None:
    for path in paths:
        with path.open("rb") as handle:
            while handle.read(16 * 1024 * 1024):
                pass


def timed(function, *arguments) -> float:
    start = time.perf_counter()
    function(*arguments)
    return time.perf_counter() - start


def index_shards(paths: list[Path], cache: Path, workers: Workers, check: bool) -> None:
    tasks = [Task(f"{path.name}-{check}", index_shard, (path, path.name, check)) for path in paths]
    run_cached(tasks, cache, workers, "indexing")


def peak_mib(path: Path) -> float:
    tracemalloc.start()
    index_shard(path, check_images=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40_000, help="JPEG files for the EXIF comparison")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--records", type=int, default=4_000, help="records per shard")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="geoloc-ingest-") as scratch, Workers(args.workers) as workers:
        scratch = Path(scratch)
        templates = photos(2_000, (96, 72))
        names = [f"{n // 1000:03d}/{n:07d}.jpg" for n in range(args.files)]
        write_files(scratch / "photos", {name: templates[n % len(templates)][:-2] + n.to_bytes(4, "big") + b"\xff\xd9"
                                         for n, name in enumerate(names)})
        plain_exif_loop(scratch / "photos", names)
        plain_seconds = timed(plain_exif_loop, scratch / "photos", names)
        start_seconds = timed(workers.start, "geoloc.catalog.scan")
        ours_seconds = timed(scan_files, scratch / "photos", names, True, scratch / "cache-exif", workers, "EXIF")

        big = photos(300, (320, 240))
        shard_paths = []
        for s in range(args.shards):
            path = scratch / f"shard_{s:05d}.msg"
            write_shard(path, [{"id": f"{s}/{n}.jpg", "image": big[n % len(big)]} for n in range(args.records)])
            shard_paths.append(path)
        total_bytes = sum(p.stat().st_size for p in shard_paths)
        plain_read(shard_paths)
        read_seconds = timed(plain_read, shard_paths)
        index_seconds = timed(index_shards, shard_paths, scratch / "cache-index", workers, False)
        check_seconds = timed(index_shards, shard_paths, scratch / "cache-check", workers, True)

        small = scratch / "small.msg"
        large = scratch / "large.msg"
        write_shard(small, [{"id": f"{n}.jpg", "image": big[n % len(big)]} for n in range(1_000)])
        write_shard(large, [{"id": f"{n}.jpg", "image": big[n % len(big)]} for n in range(4_000)])
        small_peak, large_peak = peak_mib(small), peak_mib(large)

    print(json.dumps({
        "files": args.files,
        "workers": args.workers,
        "workers_start_s": round(start_seconds, 2),
        "plain_files_per_s": round(args.files / plain_seconds),
        "scan_files_per_s": round(args.files / ours_seconds),
        "exif_speedup": round(plain_seconds / ours_seconds, 2),
        "shard_mib": round(total_bytes / 2**20),
        "plain_read_mib_per_s": round(total_bytes / 2**20 / read_seconds),
        "index_mib_per_s": round(total_bytes / 2**20 / index_seconds),
        "shard_read_ratio": round(read_seconds / index_seconds, 3),
        "shard_check_ratio": round(read_seconds / check_seconds, 3),
        "index_peak_mib_small": round(small_peak, 1),
        "index_peak_mib_large": round(large_peak, 1),
    }))


if __name__ == "__main__":
    main()
