"""`geoloc predict --recipe` against the same stages run as separate commands: photos/s and peak memory.

The same photos and models both ways: GeoCLIP (its real heads and 100K gallery on a
random-weight CLIP, `--clip small` or `l14` = ViT-L/14's size), retrieval with reverse
neighbours over a gallery index of `--gallery` photos, zero-shot answers with G3's RAG
prompt from a stand-in endpoint on 127.0.0.1 (answering at once, so the figures are the
pipeline's, not a model server's), and the light ranker (random weights). By hand, as
docs/candidates.md and docs/rankers.md write them: `candidates geoclip`, `retrieve`,
`candidates zeroshot`, `candidates compile`, `catalog build` and `embed` of the query photos
(the light ranker reads their embeddings), `ranker score`, each its own process; the
recipe: one `predict --recipe` process. Each is timed from its start to its exit (imports
and model loads included: a user pays them). Both start with an empty answer cache and
GeoCLIP's gallery features already cached. Peak memory: each process's VmHWM (by hand,
the largest of its commands).

Prints one JSON line: {"photos", "clip", "by_hand_s", "recipe_s", "by_hand_photos_per_s",
"recipe_photos_per_s", "speedup", "by_hand_peak_rss_mb", "recipe_peak_rss_mb",
"same_predictions"} (same_predictions: the same place for every photo both ways).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]

from process_memory import peak_rss_mb  # noqa: E402


class StandIn(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint that answers every request at once with n coordinates."""

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        choices = [{"index": i, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": f"latitude: {10 + i}.5, longitude: 20.25"}}
                   for i in range(body.get("n") or 1)]
        payload = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                              "choices": choices}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def child(arguments: list[str], peak_file: Path) -> None:
    """Run one geoloc command in this process, then record its peak memory."""
    from geoloc.cli import app

    try:
        app(arguments, standalone_mode=False)
    finally:
        peak_file.write_text(str(peak_rss_mb()))


def timed(arguments: list[str], work: Path, environment: dict) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one geoloc command in its own process."""
    peak = work / "peak.txt"
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", str(peak), "--", *map(str, arguments)], check=True,
                   env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, float(peak.read_text())


def build_world(root: Path, args: argparse.Namespace, environment: dict) -> Path:
    """Gallery index, query photos, light ranker and the CLIP, made with the CLI (untimed)."""
    from datawriters import write_files
    from ingest import photos

    from geoloc.rank.light import LightConfig, LightRanker, save_light_ranker

    clip = root / "clip"
    if args.clip == "l14":
        from ray_capacity import build_clip

        build_clip(clip, "l14")
    else:
        from geoclip_train import save_clip

        save_clip(clip, "small")
    made = photos(args.gallery + args.photos, (320, 240))
    write_files(root / "gallery", {f"g{n:05d}.jpg": data for n, data in enumerate(made[:args.gallery])})
    write_files(root / "photos", {f"q{n:05d}.jpg": data for n, data in enumerate(made[args.gallery:])})
    for arguments in (["catalog", "build", "--source", f"photos={root / 'gallery'}", "--out", root / "catalog"],
                      ["embed", "--catalog", root / "catalog", "--backbone", clip, "--out", root / "embeddings",
                       "--device", "cpu"],
                      ["index", "build", "--embeddings", root / "embeddings", "--catalog", root / "catalog", "--out",
                       root / "index"],
                      ["candidates", "geoclip", root / "photos", "--backbone", clip, "--top-k", "1", "--out",
                       root / "warm-up.parquet", "--device", "cpu"]):  # GeoCLIP's gallery features, cached
        timed(arguments, root, environment)
    save_light_ranker(LightRanker(LightConfig(dim=768, backbone=str(clip)), seed=0), root / "light")
    return clip


def recipe_text(base_url: str, clip: Path, batch_size: int) -> str:
    return f"""\
sources:
  geoclip: {{backbone: {clip}, top_k: 10}}
  retrieval: {{index: index, k: 20, reverse: 20}}
  zeroshot: {{model: stand-in, base_url: {base_url}, preset: g3, rag: [0, 5], cache: recipe.sqlite}}
ranker:
  kind: light
  model: light
  gallery_embeddings: embeddings
  gallery_table: index
  top: {{retrieval: 10, zeroshot: 5}}
device: cpu
batch_size: {batch_size}
"""


def by_hand(root: Path, clip: Path, base_url: str, batch: str, environment: dict) -> tuple[float, float]:
    photos, seconds, peak = root / "photos", 0.0, 0.0
    commands = [
        ["candidates", "geoclip", photos, "--backbone", clip, "--top-k", "10", "--out", root / "geoclip.parquet",
         "--device", "cpu", "--batch-size", batch],
        ["retrieve", photos, "--index", root / "index", "--k", "20", "--reverse", "20", "--out",
         root / "neighbours.parquet", "--device", "cpu", "--batch-size", batch],
        ["candidates", "zeroshot", photos, "--model", "stand-in", "--base-url", base_url, "--preset", "g3",
         "--neighbours", root / "neighbours.parquet", "--rag", "0", "--rag", "5", "--out", root / "answers.parquet",
         "--cache", root / "by-hand.sqlite"],
        ["candidates", "compile", "--candidates", root / "geoclip.parquet", "--candidates",
         root / "neighbours.parquet", "--zeroshot", root / "answers.parquet", "--out", root / "candidates.parquet"],
        ["catalog", "build", "--source", f"photos={photos}", "--out", root / "query-catalog"],
        ["embed", "--catalog", root / "query-catalog", "--backbone", clip, "--out", root / "query-embeddings",
         "--device", "cpu", "--batch-size", batch, "--workers", "0"],
        ["ranker", "score", "--candidates", root / "candidates.parquet", "--adapter", root / "light",
         "--query-embeddings", root / "query-embeddings", "--gallery-embeddings", root / "embeddings",
         "--gallery-table", root / "index", "--top", "retrieval=10", "--top", "zeroshot=5",
         "--out", root / "by-hand.parquet"],
    ]
    for arguments in commands:
        took, used = timed(arguments, root, environment)
        seconds, peak = seconds + took, max(peak, used)
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--gallery", type=int, default=500)
    parser.add_argument("--clip", choices=("small", "l14"), default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    import polars as pl

    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        environment = {**os.environ, "XDG_CACHE_HOME": str(root / "cache"), "GEOLOC_API_KEY": "stand-in",
                       "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        clip = build_world(root, args, environment)
        hand_s, hand_peak = by_hand(root, clip, base_url, str(args.batch_size), environment)
        (root / "recipe.yaml").write_text(recipe_text(base_url, clip, args.batch_size))
        recipe_s, recipe_peak = timed(["predict", "--recipe", root / "recipe.yaml", root / "photos", "--out",
                                       root / "recipe.parquet"], root, environment)
        columns = ["image_id", "lat", "lon"]
        same = (pl.read_parquet(root / "by-hand.parquet").sort("image_id").select(columns)
                .equals(pl.read_parquet(root / "recipe.parquet").sort("image_id").select(columns)))
    server.shutdown()
    print(json.dumps({"photos": args.photos, "clip": args.clip, "by_hand_s": round(hand_s, 2),
                      "recipe_s": round(recipe_s, 2), "by_hand_photos_per_s": round(args.photos / hand_s, 2),
                      "recipe_photos_per_s": round(args.photos / recipe_s, 2), "speedup": round(hand_s / recipe_s, 2),
                      "by_hand_peak_rss_mb": hand_peak, "recipe_peak_rss_mb": recipe_peak,
                      "same_predictions": same}))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[4:], Path(sys.argv[2]))
    else:
        main()
