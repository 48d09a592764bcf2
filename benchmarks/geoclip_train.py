"""One epoch of GeoCLIP training: the `geoclip` package's own `train()` against geoloc's trainer over features
embedded once.

Both sides train the same thing: the image MLP, the location encoder and the temperature,
with CLIP frozen, on the same real JPEGs (smooth random pictures, 640x480) with random
coordinates, the same batch size, the queue of 4096 and Adam at GeoCLIP's settings. The
package decodes, augments (its train transform) and runs CLIP on every photo at every step;
geoloc embeds every photo once (`geoloc embed --features raw-geoclip-train`, timed and
reported apart) and trains on the stored features. CLIP is ViT-L/14-shaped with random
weights (`--backbone vit-l14`, the package's own configuration) or a small CLIP at 224 px
(`--backbone small`, for a quick run on a CPU), saved once to a folder that both sides load.

Each side runs in its own process, so each one's peak memory is its own: resident set
(VmHWM) and, on a GPU, the most CUDA memory allocated. Each trains two epochs; the second
is timed (the first pays for warm-up). Prints one JSON line: per side the epoch's seconds,
photos per second and peak memory; geoloc's embedding pass; `ratio_per_epoch` (package
epoch / geoloc epoch, goal >= 50) and `break_even_epochs` (after how many epochs the
embedding pass plus geoloc's epochs cost less than the package's epochs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from process_memory import peak_rss_mb  # noqa: E402

LEARNING_RATE, WEIGHT_DECAY, GAMMA = 3e-5, 1e-6, 0.87


def write_photos(folder: Path, count: int, seed: int = 0) -> None:
    """Smooth random 640x480 JPEGs with random coordinates: a catalog for geoloc and the package's CSV."""
    import polars as pl
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "photos").mkdir(parents=True)
    names = [f"p{number:05d}.jpg" for number in range(count)]
    for name in names:
        small = (rng.random((15, 20, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((640, 480), Image.BILINEAR).save(folder / "photos" / name, quality=90)
    lat, lon = rng.uniform(-60, 70, count), rng.uniform(-180, 180, count)
    (folder / "catalog").mkdir()
    pl.DataFrame({"image_id": names, "uri": names, "lat": lat, "lon": lon, "source": "photos"}).write_parquet(
        folder / "catalog" / "catalog.parquet")
    pl.DataFrame({"IMG_FILE": names, "LAT": lat, "LON": lon}).write_csv(folder / "package.csv")


def save_clip(folder: Path, backbone: str) -> None:
    """CLIP with random weights: the package's own ViT-L/14 configuration, or a small one at 224 px."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    if backbone == "vit-l14":
        from geoclip.model.image_encoder import ImageEncoder

        clip = ImageEncoder(from_pretrained=False).CLIP
    else:
        clip = CLIPModel(CLIPConfig(
            projection_dim=768,
            text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "vocab_size": 100, "max_position_embeddings": 16},
            vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "image_size": 224, "patch_size": 32}))
    clip.save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)


def memory(device) -> dict:
    import torch

    figures = {"peak_rss_mb": peak_rss_mb()}
    if device.type == "cuda":
        figures["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return figures


def package_side(folder: Path, args: argparse.Namespace) -> dict:
    """The package's GeoCLIP and `train()`, fed by its GeoDataLoader with its train transform."""
    import torch
    from geoclip import GeoCLIP
    from geoclip.train import train
    from geoclip.train.dataloader import GeoDataLoader, img_train_transform

    from geoloc.encode.backbone import pick_device

    device = pick_device(args.device)
    torch.manual_seed(0)
    model = GeoCLIP(from_pretrained=False, queue_size=args.queue_size, clip_path=str(folder / "clip")).to(device)
    data = GeoDataLoader(str(folder / "package.csv"), str(folder / "photos"), transform=img_train_transform())
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=GAMMA)
    seconds = []
    for epoch in range(2):
        started = time.perf_counter()
        train(loader, model, optimizer, epoch, args.batch_size, device, scheduler=schedule)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return {"epoch_s": round(seconds[1], 3), "first_epoch_s": round(seconds[0], 3),
            "photos_per_s": round(args.photos / seconds[1], 1), **memory(device)}


def geoloc_side(folder: Path, args: argparse.Namespace) -> dict:
    """`geoloc embed --features raw-geoclip-train` once, then geoloc's trainer on the stored features."""
    import polars as pl
    import torch

    from geoloc.encode import embed_table
    from geoloc.encode.backbone import pick_device
    from geoloc.encode.loading import load_backbone
    from geoloc.geoclip import training_rows
    from geoloc.geoclip.training import TrainSettings, new_state, train_epochs

    device = pick_device(args.device)
    backbone = load_backbone(str(folder / "clip"), device=args.device, dtype="float32")
    items = pl.read_parquet(folder / "catalog" / "catalog.parquet", columns=["image_id", "uri", "source"])
    started = time.perf_counter()
    embed_table(items, lambda source, uri: (folder / "photos" / uri).read_bytes(),
                backbone.with_features("raw-geoclip-train"), folder / "embeddings", batch_size=args.batch_size,
                workers=args.workers)
    embed_s = time.perf_counter() - started
    del backbone
    rows = training_rows(folder / "catalog", folder / "embeddings")
    settings = TrainSettings(epochs=2, batch_size=args.batch_size, queue_size=args.queue_size)
    marks = [time.perf_counter()]

    def after_epoch(state) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    train_epochs(new_state(settings), rows.features, rows.coordinates, settings, after_epoch)
    seconds = np.diff(marks)
    return {"epoch_s": round(float(seconds[1]), 4), "first_epoch_s": round(float(seconds[0]), 4),
            "photos_per_s": round(args.photos / float(seconds[1]), 1), "embed_s": round(embed_s, 2),
            "embed_photos_per_s": round(args.photos / embed_s, 1), **memory(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--queue-size", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader processes decoding photos, both sides")
    parser.add_argument("--backbone", choices=["vit-l14", "small"], default="vit-l14")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--side", choices=["package", "geoloc"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side is not None:
        side = package_side if args.side == "package" else geoloc_side
        print(json.dumps(side(args.folder, args)))
        return
    with tempfile.TemporaryDirectory(prefix="geoclip-train-") as scratch:
        folder = Path(scratch)
        write_photos(folder, args.photos)
        save_clip(folder / "clip", args.backbone)
        figures = {}
        for side in ("package", "geoloc"):
            command = [sys.executable, __file__, *sys.argv[1:], "--side", side, "--folder", str(folder)]
            result = subprocess.run(command, check=True, capture_output=True, text=True)
            figures[side] = json.loads(result.stdout.strip().splitlines()[-1])
    package, ours = figures["package"], figures["geoloc"]
    saved = package["epoch_s"] - ours["epoch_s"]
    print(json.dumps({
        "photos": args.photos, "batch_size": args.batch_size, "queue_size": args.queue_size,
        "backbone": args.backbone, "workers": args.workers, **figures,
        "ratio_per_epoch": round(package["epoch_s"] / ours["epoch_s"], 1),
        "break_even_epochs": round(ours["embed_s"] / saved, 2) if saved > 0 else None,
    }))


if __name__ == "__main__":
    main()
