"""Landmark resolution speed against a local stand-in of the MediaWiki API that answers in 200 ms.

Prints one JSON line: landmarks, requests, seconds (goal: 200,000 landmarks in at most
15 minutes at the default, polite concurrency), plus how many were resolved and how
many requests went to Wikidata. The stand-in returns up to 500 coordinates per
answer, as the real API does for `colimit=max`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from mediawiki_standin import StandIn, Wiki  # noqa: E402

from geoloc.catalog.landmarks import Politeness, resolve_landmarks  # noqa: E402


def stand_in(count: int, latency: float) -> Wiki:
    """80% of categories with coordinates, 15% only through their Wikidata item, 5% with neither."""
    wiki = Wiki(latency_seconds=latency, coordinates_per_response=500)
    for n in range(count):
        title = f"Category:Landmark {n}"
        point = (-80 + (n % 16_000) / 100, -179 + (n % 35_800) / 100)
        if n % 20 < 16:
            wiki.pages[title] = {"coordinates": point}
        elif n % 20 < 19:
            wiki.pages[title] = {"item": f"Q{n}"}
            wiki.items[f"Q{n}"] = point
        else:
            wiki.pages[title] = {}
    return wiki


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landmarks", type=int, default=200_000)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the stand-in takes per answer")
    parser.add_argument("--concurrency", type=int, default=Politeness.concurrency)
    args = parser.parse_args()
    wiki = stand_in(args.landmarks, args.latency)
    with tempfile.TemporaryDirectory(prefix="geoloc-landmarks-") as scratch:
        scratch = Path(scratch)
        categories = scratch / "train_label_to_category.csv"
        pl.DataFrame({
            "landmark_id": range(args.landmarks),
            "category": [f"http://commons.wikimedia.org/wiki/Category:Landmark_{n}" for n in range(args.landmarks)],
        }).write_csv(categories)
        with StandIn(wiki) as url:
            start = time.perf_counter()
            summary = resolve_landmarks(categories, scratch / "coords.csv", commons_api=url, wikidata_api=url,
                                        politeness=Politeness(concurrency=args.concurrency))
            seconds = time.perf_counter() - start
    print(json.dumps({
        "landmarks": args.landmarks,
        "requests": summary.requests,
        "seconds": round(seconds, 1),
        "resolved": summary.resolved,
        "wikidata_requests": wiki.requests["wbgetentities"],
        "unresolved": sum(summary.unresolved.values()),
        "latency_s": args.latency,
        "concurrency": args.concurrency,
    }))


if __name__ == "__main__":
    main()
