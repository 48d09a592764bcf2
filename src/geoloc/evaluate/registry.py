"""The public test sets, so that a truth file is named in the output and a partial copy is flagged.

A benchmark whose photo ids are published is known by a digest of each id (the first 64
bits of its SHA-256, bundled in geoloc/data/benchmark_ids.json): a truth file is that
benchmark when it has exactly its ids, and a subset or a superset of it when most ids
match, with how many it lacks and adds. The others are known by their size and the name
of their metadata file only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import polars as pl

MAX_IDS_DIGESTED = 1_000_000
"""Truth files larger than this are not digested (no benchmark with published ids comes near)."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    photos: int
    file_names: tuple[str, ...] = ()
    """Names its public metadata file goes by (lower case)."""
    ids_key: str | None = None
    """Its entry in benchmark_ids.json, where its ids are published."""


BENCHMARKS = (
    Benchmark("IM2GPS3K", 2997, ("im2gps3k_places365.csv", "im2gps3k.csv"), "im2gps3k"),
    Benchmark("Im2GPS", 237, ("im2gps_places365.csv",), "im2gps"),
    Benchmark("YFCC4K", 4536, ("yfcc4k_places365.csv", "yfcc4k.csv")),
    Benchmark("YFCC26K", 25600, ("yfcc25600_places365.csv", "yfcc26k.csv")),
    Benchmark("OSV-5M test", 210122),
)


@dataclass(frozen=True)
class Identification:
    """What the truth file is: a line for the output, and a warning when its figures are not the benchmark's."""

    label: str
    warning: str | None = None


def id_digests(ids: pl.Series) -> set[str]:
    """The digest of each id: the first 64 bits of its SHA-256, in hex."""
    return {hashlib.sha256(str(image_id).encode()).hexdigest()[:16] for image_id in ids.to_list()}


@cache
def published_digests() -> dict[str, frozenset[str]]:
    text = resources.files("geoloc").joinpath("data", "benchmark_ids.json").read_text(encoding="utf-8")
    return {key: frozenset(digests) for key, digests in json.loads(text).items()}


def _by_ids(ids: pl.Series) -> Identification | None:
    digests = id_digests(ids)
    for benchmark in BENCHMARKS:
        if benchmark.ids_key is None:
            continue
        known = published_digests()[benchmark.ids_key]
        shared = len(digests & known)
        if shared == len(known) == len(digests):
            return Identification(f"{benchmark.name}, {benchmark.photos:,} photos")
        if 2 * shared > min(len(known), len(digests)):
            lacks, adds = len(known) - shared, len(digests) - shared
            parts = [f"lacks {lacks:,} of its {benchmark.photos:,} photos"] if lacks else []
            parts += [f"adds {adds:,} photos it does not have"] if adds else []
            label = f"{benchmark.name} ({' and '.join(parts)})"
            return Identification(label, f"{label}: the figures are not comparable with published ones")
    return None


def identify(truth_path: str | Path, ids: pl.Series) -> Identification | None:
    """Which public test set a truth file is, or None where it is none of them."""
    if len(ids) <= MAX_IDS_DIGESTED and (by_ids := _by_ids(ids)) is not None:
        return by_ids
    name = Path(truth_path).name
    for benchmark in BENCHMARKS:
        if name.lower() in benchmark.file_names:
            if benchmark.ids_key is None and len(ids) == benchmark.photos:
                return Identification(f"{benchmark.name}, {benchmark.photos:,} photos (by file name and size)")
            return Identification(
                f"{benchmark.name}?",
                f"{truth_path}: {len(ids):,} photos, but {benchmark.name}'s {name} has {benchmark.photos:,}"
                + ("" if benchmark.ids_key is None else ", and not its ids")
                + ": the figures are not comparable with published ones",
            )
    for benchmark in BENCHMARKS:
        if benchmark.ids_key is None and len(ids) == benchmark.photos:
            return Identification(f"{len(ids):,} photos, the size of {benchmark.name} (its ids are not published)")
    return None
