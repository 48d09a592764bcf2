"""Opening a member index the way each DataLoader worker does: memory-mapped sorted arrays against a Python dict.

Writes an index of N synthetic members (MP-16's layout: 20,000 members a MessagePack shard,
`ab/cd/<n>.jpg` names) as Parquet, then, each in a fresh process:

- new build: `MemberLookup.cached` reads the index, sorts the key hashes and writes the
  `.lookup/` cache (done once per index, before the workers start);
- new open: `ImageStore.open_index` maps the cache, as every worker does;
- old: what `ImageStore` did before, in every worker: read the index and build a dict
  `(container, member) -> (offset, length)` from its rows (implemented here as the anchor).

Each opening process then looks up `--lookups` random uris (split at `#` and looked up as
`ImageStore.read_bytes` does, without reading the file) and checks every answer.

Prints one JSON line: members, build_s (the cache, once), open_s, lookups_per_s,
peak_rss_mb (peak resident set of the opening process, mapped pages included),
import_rss_mb (the same process after its imports, before opening), private_mb and
mapped_mb (its resident anonymous memory, and the cache's file pages it touched, which
the page cache shares between workers), then old_build_s (the dict alone), old_open_s
(reading the index and building the dict), old_lookups_per_s, old_peak_rss_mb,
old_private_mb, and load (the 1-minute load average: other work slows the rates).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from process_memory import peak_rss_mb, status_mb

PER_SHARD = 20_000
LENGTH = 1_000


def _uri(number: int) -> str:
    return f"shard_{number // PER_SHARD:05d}.msg#{number % 251:02x}/{number % 241:02x}/{number}.jpg"


def write_index(members: int, path: Path) -> None:
    """N members, offsets `n * LENGTH`, in INDEX_SCHEMA's columns, built without a row loop."""
    from geoloc.images import INDEX_SCHEMA
    from geoloc.tables import write_table

    n = pl.int_range(0, members, dtype=pl.Int64, eager=True).alias("n")
    frame = pl.DataFrame(n).select(
        pl.format("shard_{}.msg", (pl.col("n") // PER_SHARD).cast(pl.Utf8).str.zfill(5)).alias("container"),
        pl.format("{}/{}/{}.jpg", _hex(pl.col("n") % 251), _hex(pl.col("n") % 241), "n").alias("member"),
        (pl.col("n") * LENGTH).alias("offset"),
        pl.lit(LENGTH, dtype=pl.Int64).alias("length"),
    )
    unknown = [pl.lit(None, dtype=INDEX_SCHEMA[name]).alias(name) for name in ("content_hash", "format", "problem",
                                                                               "detail")]
    write_table(frame.with_columns(unknown), path)


def _hex(values: pl.Expr) -> pl.Expr:
    """Two lowercase hex digits of 0..255, as `f"{n:02x}"` writes them."""
    digits = pl.lit("0123456789abcdef")
    return pl.concat_str(digits.str.slice(values // 16, 1), digits.str.slice(values % 16, 1))


def _lookups(locate, members: int, count: int) -> float:
    """Lookups per second of `locate(container, member)` on random uris; every answer is checked after."""
    numbers = np.random.default_rng(0).integers(0, members, count).tolist()
    uris = [_uri(number) for number in numbers]
    started = time.perf_counter()
    found = [locate(*uri.partition("#")[::2]) for uri in uris]
    rate = count / (time.perf_counter() - started)
    if found != [(number * LENGTH, LENGTH) for number in numbers]:
        raise SystemExit("a lookup found the wrong member")
    return round(rate)


def phase(name: str, index_path: Path, members: int, count: int) -> dict:
    """One measured step in this (fresh) process."""
    from geoloc.images import MEMBER_SEPARATOR, ImageStore, MemberLookup
    from geoloc.tables import read_table

    imported = peak_rss_mb()
    started = time.perf_counter()
    if name == "build":
        MemberLookup.cached(index_path, MEMBER_SEPARATOR)
        return {"build_s": round(time.perf_counter() - started, 2)}
    if name == "open":
        store = ImageStore.open_index(index_path.parent, index_path)
        opened = time.perf_counter() - started
        rate = _lookups(lambda container, member: store.members.locate(f"{container}#{member}"), members, count)
        return {"open_s": round(opened, 3), "lookups_per_s": rate, "peak_rss_mb": peak_rss_mb(),
                "import_rss_mb": imported,
                "private_mb": status_mb("RssAnon"), "mapped_mb": status_mb("RssFile")}
    usable = read_table(index_path).filter(pl.col("problem").is_null())
    built = time.perf_counter()
    locations = {
        (container, member): (offset, length)
        for container, member, offset, length in usable.select("container", "member", "offset", "length").iter_rows()
    }
    done = time.perf_counter()
    rate = _lookups(lambda container, member: locations.get((container, member)), members, count)
    return {"old_build_s": round(done - built, 2), "old_open_s": round(done - started, 2),
            "old_lookups_per_s": rate, "old_peak_rss_mb": peak_rss_mb(), "old_private_mb": status_mb("RssAnon")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4_700_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--phase", choices=["build", "open", "old"], help=argparse.SUPPRESS)
    parser.add_argument("--index", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, args.index, args.members, args.lookups)))
        return
    figures: dict = {"members": args.members}
    with tempfile.TemporaryDirectory() as folder:
        index_path = Path(folder) / "index.parquet"
        write_index(args.members, index_path)
        for name in ("build", "open", "old"):
            command = [sys.executable, __file__, "--phase", name, "--index", str(index_path),
                       "--members", str(args.members), "--lookups", str(args.lookups)]
            result = subprocess.run(command, check=True, capture_output=True, text=True)
            figures |= json.loads(result.stdout.strip().splitlines()[-1])
    figures["load"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
