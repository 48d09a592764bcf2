"""Where was this photo taken? The main job, shared by `geoloc predict` and the web app.

Photos are decoded in batches (Pillow's decompression-bomb guard stays on), scored by
GeoCLIP, and each answer carries place names, ranked alternatives with probabilities,
and a confidence radius. A photo's own EXIF GPS is reported beside the guess and never
used to make it. Unreadable files are reported and skipped; the rest go on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, UnidentifiedImageError

from geoloc.candidates.geoclip import GeoClip
from geoloc.candidates.zeroshot import Photo
from geoloc.places import place_names

UNREADABLE = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


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


def _decode(photo: Photo) -> Image.Image:
    with Image.open(photo.path) as image:
        image.load()
        return image.convert("RGB")


def guess_photos(
    photos: list[Photo],
    geoclip: GeoClip,
    top_k: int = 5,
    batch_size: int = 16,
    exif_gps: Callable[[Path], tuple[float, float] | None] = lambda path: None,
    on_progress: Callable[[int], None] = lambda done: None,
) -> Iterator[PhotoGuess | Unreadable]:
    """Answers in the photos' order, batch by batch, as they are ready."""
    for start in range(0, len(photos), batch_size):
        batch = photos[start : start + batch_size]
        decoded: list[tuple[Photo, Image.Image]] = []
        failures: dict[str, Unreadable] = {}
        for photo in batch:
            try:
                decoded.append((photo, _decode(photo)))
            except UNREADABLE as error:
                failures[photo.query_id] = Unreadable(str(photo.path), f"{error.__class__.__name__}: {error}")
        guesses = iter(_guess_batch(decoded, geoclip, top_k, exif_gps) if decoded else [])
        for photo in batch:
            yield failures.get(photo.query_id) or next(guesses)
        on_progress(len(batch))


def _guess_batch(
    decoded: list[tuple[Photo, Image.Image]],
    geoclip: GeoClip,
    top_k: int,
    exif_gps: Callable[[Path], tuple[float, float] | None],
) -> list[PhotoGuess]:
    result = geoclip.top_k(geoclip.backbone.pixel_values([image for _, image in decoded]), top_k)
    coordinates = result.coordinates.astype(np.float64)
    places = place_names(coordinates[..., 0].ravel(), coordinates[..., 1].ravel()).reshape(coordinates.shape[:2])
    guesses = []
    for row, (photo, _) in enumerate(decoded):
        alternatives = [
            Alternative(float(lat), float(lon), float(prob), str(place))
            for (lat, lon), prob, place in zip(coordinates[row], result.probabilities[row], places[row])
        ]
        gps = exif_gps(photo.path)
        guesses.append(PhotoGuess(
            image=str(photo.path),
            image_id=photo.query_id,
            lat=alternatives[0].lat,
            lon=alternatives[0].lon,
            place=alternatives[0].place,
            radius_km=float(result.radius_km[row]),
            candidates=alternatives,
            exif=None if gps is None else {"lat": gps[0], "lon": gps[1]},
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
