"""Speed and memory of `geoloc catalog decontaminate` on a catalog of photo-sized JPEGs.

Writes N photo-like 1024x768 JPEGs and a CSV catalog source, builds the catalog, plants
copies of 50 benchmark photos (re-encoded at quality 60 and halved), then:

- times the perceptual hashing one worker does (`hash_photos` on every photo) against
  what a user's script does for the same hashes: `imagehash.phash(Image.open(path))`
  on each file, fully decoded, in one process; both on one core, in this run;
- runs the whole `decontaminate` (both cores) in a fresh process and reports its wall
  time and peak resident set.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from geoloc.machine import cpu_count


def photo_like(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    noise = rng.integers(-20, 20, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(coarse, int) + noise, 0, 255).astype(np.uint8))


def encoded(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_world(root: Path, photos: int, planted: int, seed: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    (root / "bench").mkdir()
    names = []
    for number in range(photos):
        image = photo_like(rng, (1024, 768))
        name = f"img/{number:06d}.jpg"
        if number < planted:
            (root / "bench" / f"{number}.jpg").write_bytes(encoded(image))
            image = image.resize((512, 384))
        (root / name).write_bytes(encoded(image, 60 if number < planted else 90))
        names.append(name)
    lat = rng.uniform(-60, 70, photos)
    lon = rng.uniform(-180, 180, photos)
    pl.DataFrame({"path": names, "lat": lat, "lon": lon}).write_csv(root / "photos.csv")
    return root / "photos.csv", root / "bench"


def plain_hashes(paths: list[Path]) -> list[str]:
    import imagehash

    return [str(imagehash.phash(Image.open(path))) for path in paths]


def full_run(catalog: Path, bench: Path, out: Path) -> tuple[float, float, dict[str, int]]:
    from geoloc.catalog import BuildOptions
    from geoloc.catalog.decontaminate import decontaminate

    start = time.perf_counter()
    summary = decontaminate(catalog, [bench], out, options=BuildOptions(work_dir=out / ".work",
                                                                        workers=cpu_count()))
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(own, workers) / 1024, summary.removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--planted", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from geoloc.catalog import BuildOptions, build_catalog
    from geoloc.catalog.decontaminate import hash_photos

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        table, bench = write_world(root, args.photos, args.planted, args.seed)
        catalog = root / "catalog"
        build_catalog([("csv", table)], catalog, BuildOptions(work_dir=catalog / ".work", workers=1))
        uris = pl.read_parquet(catalog / "catalog.parquet")["uri"].to_list()
        start = time.perf_counter()
        hash_photos(str(catalog), "csv", uris)
        ours = time.perf_counter() - start
        start = time.perf_counter()
        plain_hashes([root / uri for uri in uris])
        plain = time.perf_counter() - start
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            run_s, peak_mb, removed = pool.apply(full_run, (catalog, bench, root / "clean"))
    print(json.dumps({
        "photos": args.photos,
        "photo_pixels": "1024x768",
        "hash_photos_per_s_per_core": round(args.photos / ours, 1),
        "plain_photos_per_s_per_core": round(args.photos / plain, 1),
        "speedup": round(plain / ours, 2),
        "decontaminate_s": round(run_s, 1),
        "decontaminate_workers": cpu_count(),
        "peak_rss_mb": round(peak_mb),
        "planted": args.planted,
        "found": removed,
    }))


if __name__ == "__main__":
    main()
