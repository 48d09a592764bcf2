"""Where was this photo taken? The main job, shared by `geoloc predict` and the web app.

Photos are decoded in batches (Pillow's decompression-bomb guard stays on), scored by
GeoCLIP, and each answer carries place names, ranked alternatives with probabilities,
and a confidence radius. A photo's own EXIF GPS is reported beside the guess and never
used to make it. Unreadable files are reported and skipped; the rest go on. With an
output file, answers are kept part by part beside it, so a killed run over a large folder
resumes where it stopped (`guess_photos_resumable`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from geoloc.candidates.geoclip import GeoClip
from geoloc.images import Photo
from geoloc.images.decoding import UNREADABLE, decode_photo, unreadable_reason
from geoloc.places import place_names

PART_PHOTOS = 1000
"""Photos per part of a resumable run: what a kill can lose."""


@dataclass(frozen=True)
class Alternative:
    lat: float
    lon: float
    prob: float
    place: str


@dataclass(frozen=True)
class PhotoGuess:
    """One photo's answer; `as_json` is the object `geoloc predict --json` prints."""

    image: str
    image_id: str
    lat: float
    lon: float
    place: str
    radius_km: float
    candidates: list[Alternative]
    exif: dict | None

    def as_json(self) -> dict:
        keys = ("image", "lat", "lon", "place", "radius_km", "candidates", "exif")
        return {key: value for key, value in asdict(self).items() if key in keys}


@dataclass(frozen=True)
class Unreadable:
    image: str
    reason: str


@dataclass(frozen=True)
class LoadedPhoto:
    """A decoded photo ready for the model, with its own EXIF position (or None)."""

    image_id: str
    label: str
    image: Image.Image
    exif: dict | None


def exif_position(source: bytes | Path) -> dict | None:
    """The photo's own GPS tags, if usable: shown beside the guess, never used to make it."""
    from geoloc.images.exif import read_header

    header = read_header(source)
    return None if header.lat is None or header.lon is None else {"lat": header.lat, "lon": header.lon}


def guess_photos(
    photos: list[Photo],
    geoclip: GeoClip,
    top_k: int = 5,
    batch_size: int = 16,
    on_progress: Callable[[int], None] = lambda done: None,
) -> Iterator[PhotoGuess | Unreadable]:
    """Answers in the photos' order, batch by batch, as they are ready."""
    for start in range(0, len(photos), batch_size):
        batch = photos[start : start + batch_size]
        loaded: list[LoadedPhoto] = []
        failures: dict[str, Unreadable] = {}
        for photo in batch:
            try:
                data = photo.path.read_bytes()
                loaded.append(LoadedPhoto(photo.query_id, str(photo.path), decode_photo(data), exif_position(data)))
            except UNREADABLE as error:
                failures[photo.query_id] = Unreadable(str(photo.path), unreadable_reason(error))
        guesses = iter(guess_images(loaded, geoclip, top_k) if loaded else [])
        for photo in batch:
            yield failures.get(photo.query_id) or next(guesses)
        on_progress(len(batch))


def answers_table(answers: list[PhotoGuess | Unreadable]) -> pl.DataFrame:
    """Answers as a table that keeps every detail: one JSON object per photo."""
    records = [{"guess": asdict(answer)} if isinstance(answer, PhotoGuess) else {"unreadable": asdict(answer)}
               for answer in answers]
    return pl.DataFrame({"answer": [json.dumps(record) for record in records]}, schema={"answer": pl.Utf8})


def answers_of(table: pl.DataFrame) -> list[PhotoGuess | Unreadable]:
    """The answers `answers_table` holds, as they were (JSON keeps every float exactly)."""
    answers: list[PhotoGuess | Unreadable] = []
    for record in map(json.loads, table["answer"]):
        if "unreadable" in record:
            answers.append(Unreadable(**record["unreadable"]))
            continue
        guess = record["guess"]
        answers.append(PhotoGuess(**{**guess, "candidates": [Alternative(**c) for c in guess["candidates"]]}))
    return answers


def photos_fingerprint(photos: list[Photo]) -> str:
    """Which files a run answers: ids, paths, sizes and modification times."""
    from geoloc.resumable import cache_key

    stats = [(photo.query_id, photo.path.resolve(), photo.path.stat().st_size, photo.path.stat().st_mtime_ns)
             if photo.path.exists() else (photo.query_id, photo.path) for photo in photos]
    return cache_key(*stats)


def guess_photos_resumable(
    photos: list[Photo],
    load_geoclip: Callable[[], GeoClip],
    work: Path,
    settings: dict,
    top_k: int = 5,
    batch_size: int = 16,
    part_photos: int = PART_PHOTOS,
    restart: bool = False,
    on_start: Callable[[int], None] = lambda done: None,
    on_progress: Callable[[int], None] = lambda done: None,
) -> list[PhotoGuess | Unreadable]:
    """Every photo's answer, in order, the parts a previous run with the same `settings` left in `work` reused.

    `on_start(done)` says how many photos were answered already; GeoCLIP is loaded only if
    any are left. The caller removes `work` once it has written its output.
    """
    from geoloc.resumable import Task, Workers, cache_paths, claim_work_folder, run_cached

    claim_work_folder(work, {**settings, "photos": photos_fingerprint(photos), "top_k": top_k,
                             "batch_size": batch_size, "part_photos": part_photos}, restart)
    parts = [photos[start:start + part_photos] for start in range(0, len(photos), part_photos)]
    loaded: list[GeoClip] = []

    def guess_part(number: int) -> pl.DataFrame:
        if not loaded:
            loaded.append(load_geoclip())
        return answers_table(list(guess_photos(parts[number], loaded[0], top_k, batch_size, on_progress)))

    tasks = [Task(f"part-{number:05d}", guess_part, (number,)) for number in range(len(parts))]
    on_start(sum(len(part) for part, path in zip(parts, cache_paths(tasks, work)) if path.is_file()))
    return [answer for frame in run_cached(tasks, work, Workers(1), None) for answer in answers_of(frame)]


def guess_images(loaded: list[LoadedPhoto], geoclip: GeoClip, top_k: int) -> list[PhotoGuess]:
    """One batch through GeoCLIP, with place names for every alternative."""
    result = geoclip.top_k(geoclip.backbone.pixel_values([photo.image for photo in loaded]), top_k)
    coordinates = result.coordinates.astype(np.float64)
    places = place_names(coordinates[..., 0].ravel(), coordinates[..., 1].ravel()).reshape(coordinates.shape[:2])
    guesses = []
    for row, photo in enumerate(loaded):
        alternatives = [
            Alternative(float(lat), float(lon), float(prob), str(place))
            for (lat, lon), prob, place in zip(coordinates[row], result.probabilities[row], places[row])
        ]
        guesses.append(PhotoGuess(
            image=photo.label,
            image_id=photo.image_id,
            lat=alternatives[0].lat,
            lon=alternatives[0].lon,
            place=alternatives[0].place,
            radius_km=float(result.radius_km[row]),
            candidates=alternatives,
            exif=photo.exif,
        ))
    return guesses


def predictions_table(guesses: list[PhotoGuess]) -> pl.DataFrame:
    """The predictions schema (image_id, lat, lon, score = the best guess's probability)."""
    return pl.DataFrame(
        {
            "image_id": [g.image_id for g in guesses],
            "lat": [g.lat for g in guesses],
            "lon": [g.lon for g in guesses],
            "score": [g.candidates[0].prob for g in guesses],
        },
        schema={"image_id": pl.Utf8, "lat": pl.Float64, "lon": pl.Float64, "score": pl.Float64},
    )


def geoclip_candidates(guesses: list[PhotoGuess]) -> pl.DataFrame:
    """The same guesses as candidates (source=geoclip), for `geoloc candidates compile`."""
    from geoloc.candidates import CANDIDATE_SCHEMA

    rows = [
        {"query_id": g.image_id, "source": "geoclip", "rank": rank, "lat": c.lat, "lon": c.lon, "score": c.prob,
         "text": c.place, "ref_uri": None}
        for g in guesses
        for rank, c in enumerate(g.candidates)
    ]
    return pl.DataFrame(rows, schema=CANDIDATE_SCHEMA)


def predictions_geojson(guesses: list[PhotoGuess]) -> dict:
    """A GeoJSON FeatureCollection: one Point per photo at its best guess, the rest as properties."""
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [g.lon, g.lat]},
                "properties": {"image_id": g.image_id, **{k: v for k, v in g.as_json().items()
                                                          if k not in ("lat", "lon")}},
            }
            for g in guesses
        ],
    }
