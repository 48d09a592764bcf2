"""Capacity plan for `--engine ray`: catalog files/s per CPU worker, embedding photos/s per actor.

Prints one JSON line. Each figure is a steady rate: the same job is run on a small and
a large input and the rate is the extra work over the extra time, so Ray's start-up,
the actors' model loading and the per-run planning (`*_overhead_s`, paid once per run)
are left out.

- `scan_files_per_s_local`: `geoloc catalog build` of a folder of EXIF-tagged JPEGs
  (`photo_kb` each) with one local worker process.
- `scan_files_per_s_per_ray_cpu`: the same build on a local Ray of `ray_cpus` CPUs,
  divided by the CPUs: what one CPU worker of a cluster scans.
- `prepare_photos_per_s_per_core`: photos read from the catalog, decoded and
  preprocessed for the model (the CPU side of embedding), one thread.
- `embed_photos_per_s_local`: `geoloc embed` of those photos with a CLIP vision tower
  of the chosen size (random weights, built here: no download), one DataLoader worker.
- `embed_photos_per_s_per_ray_actor`: the same on Ray with one actor (on a GPU when
  there is one, else on one CPU core, Ray giving each actor one thread).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]

from datawriters import write_files  # noqa: E402
from ingest import photos  # noqa: E402

from geoloc.catalog import BuildOptions, build_catalog  # noqa: E402
from geoloc.encode import CatalogImages, embed_table, prepare_photo  # noqa: E402
from geoloc.encode.backbone import pixel_values  # noqa: E402
from geoloc.encode.loading import load_backbone  # noqa: E402

VISION = {
    "b32": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "patch_size": 32, "projection_dim": 512},
    "l14": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
            "patch_size": 14, "projection_dim": 768},
}
"""CLIP vision towers by size: ViT-B/32 and ViT-L/14 (GeoCLIP's and G3's backbone), 224 px."""


def build_clip(folder: Path, size: str) -> Path:
    """A CLIP of the given vision size with random weights and a toy text tower, saved like a hub folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    vision = dict(VISION[size])
    config = CLIPConfig(
        projection_dim=vision.pop("projection_dim"),
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 100, "max_position_embeddings": 16},
        vision_config={**vision, "image_size": 224},
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)
    return folder


def steady_rate(run: Callable[[int, str], object], small: int, large: int) -> tuple[float, float]:
    """(items/s beyond the fixed cost, the fixed cost in s) from a run on `small` and one on `large` items.

    A first, untimed run on `small` items starts the worker processes.
    """
    run(small, "warm-up")
    times = []
    for count in (small, large):
        start = time.perf_counter()
        run(count, f"{count}")
        times.append(time.perf_counter() - start)
    extra = times[1] - times[0]
    rate = (large - small) / extra
    return rate, max(times[0] - small / rate, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=12_000, help="photos scanned in the large catalog run")
    parser.add_argument("--photos", type=int, default=384, help="photos embedded in the large embedding run")
    parser.add_argument("--vision", choices=sorted(VISION), default="b32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ray-cpus", type=int, default=2)
    args = parser.parse_args()

    import ray

    from geoloc.encode.ray_engine import embed_table_ray

    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="geoloc-ray-") as scratch:
        scratch = Path(scratch)
        templates = photos(500, (320, 240))
        names = [f"{n // 1000:03d}/{n:07d}.jpg" for n in range(args.files)]
        write_files(scratch / "photos", {name: templates[n % len(templates)][:-2] + n.to_bytes(4, "big") + b"\xff\xd9"
                                         for n, name in enumerate(names)})
        photo_kb = sum(len(t) for t in templates) / len(templates) / 1024
        folders = {}

        def subset(count: int) -> Path:
            """A photos folder of the first `count` files (hard links: same bytes, no copy)."""
            folder = scratch / f"subset-{count}"
            if not folder.is_dir():
                for name in names[:count]:
                    (folder / name).parent.mkdir(parents=True, exist_ok=True)
                    (folder / name).hardlink_to(scratch / "photos" / name)
            return folder

        def scan(engine: str) -> Callable[[int, str], object]:
            def run(count: int, tag: str) -> object:
                out = scratch / f"catalog-{engine}-{tag}"
                folders[engine, count] = out
                return build_catalog([("photos", subset(count))], out,
                                     BuildOptions(out / ".work", workers=1, engine=engine, chunk_files=500))
            return run

        small_files = max(args.files // 6, 500)
        scan_local, scan_local_overhead = steady_rate(scan("local"), small_files, args.files)
        ray.init(num_cpus=args.ray_cpus, num_gpus=int(gpu), include_dashboard=False)
        start = time.perf_counter()
        scan_ray, scan_ray_overhead = steady_rate(scan("ray"), small_files, args.files)
        assert pl.read_parquet(folders["ray", args.files] / "catalog.parquet").equals(
            pl.read_parquet(folders["local", args.files] / "catalog.parquet"))

        clip = str(build_clip(scratch / "clip", args.vision))
        catalog = folders["local", args.files]
        table = pl.read_parquet(catalog / "catalog.parquet").select("image_id", "uri", "source")
        backbone = load_backbone(clip)
        read_bytes, to_pixels = CatalogImages(catalog), functools.partial(pixel_values, backbone.processor)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        start_prepare = time.perf_counter()
        for source, uri in table.head(500).select("source", "uri").iter_rows():
            prepare_photo(read_bytes, (source, uri), to_pixels)
        prepare_rate = min(500, table.height) / (time.perf_counter() - start_prepare)
        torch.set_num_threads(threads)

        def embed_local(count: int, tag: str) -> object:
            return embed_table(table.head(count), CatalogImages(catalog), backbone, scratch / f"local-{tag}",
                               batch_size=args.batch_size, workers=1)

        def embed_ray(count: int, tag: str) -> object:
            return embed_table_ray(table.head(count), CatalogImages(catalog), clip, scratch / f"ray-{tag}",
                                   batch_size=args.batch_size, actors=1)

        small_photos = max(args.photos // 4, args.batch_size)
        embed_local_rate, embed_local_overhead = steady_rate(embed_local, small_photos, args.photos)
        embed_ray_rate, embed_ray_overhead = steady_rate(embed_ray, small_photos, args.photos)
        ray_seconds = time.perf_counter() - start

    print(json.dumps({
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "cpus": torch.get_num_threads(),
        "files": args.files,
        "photo_kb": round(photo_kb, 1),
        "scan_files_per_s_local": round(scan_local),
        "scan_local_overhead_s": round(scan_local_overhead, 2),
        "ray_cpus": args.ray_cpus,
        "scan_files_per_s_ray": round(scan_ray),
        "scan_files_per_s_per_ray_cpu": round(scan_ray / args.ray_cpus),
        "scan_ray_overhead_s": round(scan_ray_overhead, 2),
        "vision": args.vision,
        "batch_size": args.batch_size,
        "photos": args.photos,
        "prepare_photos_per_s_per_core": round(prepare_rate),
        "embed_photos_per_s_local": round(embed_local_rate, 1),
        "embed_local_overhead_s": round(embed_local_overhead, 2),
        "embed_photos_per_s_per_ray_actor": round(embed_ray_rate, 1),
        "embed_ray_overhead_s": round(embed_ray_overhead, 2),
        "ray_seconds": round(ray_seconds, 1),
    }))


if __name__ == "__main__":
    main()
