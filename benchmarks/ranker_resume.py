"""`geoloc ranker score` killed at half of its queries: how long the rerun takes against a full run.

A random-weight tiny Qwen2-VL (geoloc.rank.dryrun), `--queries` queries of one retrieval
candidate with its gallery photo and one zero-shot candidate, one part per query: a full
run; a `geoloc ranker score` process sent SIGKILL once half of the parts exist; the rerun
that finishes it. The full run and the rerun are `score_file` calls in this process, timed
from reading the candidates to the written predictions (model load included, Python's
imports not: on the shared machine those vary by seconds). Prints one JSON line:
{"queries", "full_s", "rerun_after_half_s", "ratio", "parts_at_kill", "identical"}
(identical: the rerun's predictions equal the full run's, row for row and bit for bit).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from geoloc.rank.dryrun import toy_scoring_run
from geoloc.rank.ranking import score_file
from geoloc.resumable import work_folder


def command(world: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", "from geoloc.cli import main; main()", "ranker", "score",
            "--candidates", str(world / "candidates.parquet"), "--images", str(world / "photos"),
            "--adapter", str(world / "adapter"), "--base", str(world / "base"), "--out", str(out),
            "--part-queries", "1", "--negatives", "0", "--device", "cpu"]


def timed_run(world: Path, out: Path) -> float:
    start = time.perf_counter()
    score_file(world / "candidates.parquet", out, images=world / "photos", adapter=world / "adapter",
               base=str(world / "base"), num_negatives=0, device="cpu", part_queries=1)
    return time.perf_counter() - start


def killed_at_half(world: Path, out: Path, queries: int) -> int:
    """Start a run, SIGKILL it once half of its parts exist; returns the parts left."""
    parts = work_folder(out)
    process = subprocess.Popen(command(world, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and len(list(parts.glob("part-*.parquet"))) < queries // 2:
        time.sleep(0.005)
    if process.poll() is not None:
        raise SystemExit("the run finished before half of its parts existed: raise --queries")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return len(list(parts.glob("part-*.parquet")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--photo-size", type=int, default=112)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        world = toy_scoring_run(Path(folder) / "world", options.queries, photo_size=options.photo_size)
        full, resumed = Path(folder) / "full.parquet", Path(folder) / "resumed.parquet"
        full_s = timed_run(world, full)
        parts_at_kill = killed_at_half(world, resumed, options.queries)
        rerun_s = timed_run(world, resumed)
        identical = pl.read_parquet(full).equals(pl.read_parquet(resumed))
    print(json.dumps({"queries": options.queries, "full_s": round(full_s, 2), "rerun_after_half_s": round(rerun_s, 2),
                      "ratio": round(rerun_s / full_s, 3), "parts_at_kill": parts_at_kill, "identical": identical}))


if __name__ == "__main__":
    main()
