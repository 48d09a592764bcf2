"""Where was this photo taken? The main job, shared by `geoloc predict` and the web app.

Photos are decoded in batches (Pillow's decompression-bomb guard stays on), scored by
GeoCLIP or PLONK, and each answer carries place names, ranked alternatives with
probabilities, and a confidence radius; PLONK's also its likelihood, localizability and the
area of its confidence region. A photo's own EXIF GPS is reported beside the guess and never
used to make it. Unreadable files are reported and skipped; the rest go on. With an
output file, answers are kept part by part beside it, so a killed run over a large folder
resumes where it stopped (`guess_photos_resumable`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from geoloc.candidates.geoclip import GeoClip
from geoloc.encode.backbone import Backbone
from geoloc.images import Photo
from geoloc.images.decoding import UNREADABLE, decode_photo, unreadable_reason
from geoloc.places import place_names
from geoloc.places.land import sea_flags

PART_PHOTOS = 1000
"""Photos per part of a resumable run: what a kill can lose."""


PLONK_FIGURES = ("log_likelihood", "localizability", "region_mass", "region_km2")


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
    at_sea: bool | None = None
    """The best guess lies in the open sea (GLOBE's land mask, geoloc.places.land); None: mask not installed."""
    log_likelihood: float | None = None
    """PLONK's: the best guess's log density, nats per steradian."""
    localizability: float | None = None
    region_mass: float | None = None
    """PLONK's: the share of the probability its confidence region holds (radius_km, region_km2)."""
    region_km2: float | None = None

    def as_json(self) -> dict:
        """Every field but the id; PLONK's figures only where the guess has them."""
        keys = ("image", "lat", "lon", "place", "radius_km", "candidates", "exif", "at_sea")
        return {key: value for key, value in asdict(self).items()
                if key in keys or (key in PLONK_FIGURES and value is not None)}


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
    data: bytes | None = field(default=None, repr=False)
    """The photo's bytes, for models that read them (a recipe's sources); None when not kept."""


def exif_position(source: bytes | Path) -> dict | None:
    """The photo's own GPS tags, if usable: shown beside the guess, never used to make it."""
    from geoloc.images.exif import read_header

    header = read_header(source)
    return None if header.lat is None or header.lon is None else {"lat": header.lat, "lon": header.lon}


def guess_photos(
    photos: list[Photo],
    geoclip: GeoClip | PlonkLocator,
    top_k: int = 5,
    batch_size: int = 16,
    on_progress: Callable[[int], None] = lambda done: None,
) -> Iterator[PhotoGuess | Unreadable]:
    """Answers in the photos' order, batch by batch, as they are ready; matched by position, not by id."""
    for start in range(0, len(photos), batch_size):
        batch = photos[start : start + batch_size]
        loaded: list[LoadedPhoto] = []
        failures: dict[int, Unreadable] = {}
        for position, photo in enumerate(batch):
            try:
                data = photo.read_bytes()
                loaded.append(LoadedPhoto(photo.query_id, str(photo.path), decode_photo(data), exif_position(data)))
            except UNREADABLE as error:
                failures[position] = Unreadable(str(photo.path), unreadable_reason(error))
        guesses = iter(guess_images(loaded, geoclip, top_k) if loaded else [])
        for position in range(len(batch)):
            yield failures.get(position) or next(guesses)
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
    load_geoclip: Callable[[], GeoClip | PlonkLocator],
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
    loaded: list[GeoClip | PlonkLocator] = []

    def guess_part(part: list[Photo]) -> pl.DataFrame:
        if not loaded:
            loaded.append(load_geoclip())
        return answers_table(list(guess_photos(part, loaded[0], top_k, batch_size, on_progress)))

    frames = answer_in_parts(photos, guess_part, work, {**settings, "top_k": top_k, "batch_size": batch_size},
                             part_photos, restart, on_start)
    return [answer for frame in frames for answer in answers_of(frame)]


def answer_in_parts(photos: list[Photo], answer_part: Callable[[list[Photo]], pl.DataFrame], work: Path,
                    settings: dict, part_photos: int = PART_PHOTOS, restart: bool = False,
                    on_start: Callable[[int], None] = lambda done: None) -> list[pl.DataFrame]:
    """Each part's table of answers, every `part_photos` photos kept in `work` as they finish; the parts a
    previous run with the same settings and photos left are reused, and `on_start(done)` says how many."""
    from geoloc.resumable import Task, Workers, cache_paths, claim_work_folder, run_cached

    claim_work_folder(work, {**settings, "photos": photos_fingerprint(photos), "part_photos": part_photos}, restart)
    parts = [photos[start:start + part_photos] for start in range(0, len(photos), part_photos)]
    tasks = [Task(f"part-{number:05d}", answer_part, (parts[number],)) for number in range(len(parts))]
    on_start(sum(len(part) for part, path in zip(parts, cache_paths(tasks, work)) if path.is_file()))
    return run_cached(tasks, work, Workers(1), None)


@dataclass
class PlonkLocator:
    """PLONK as a predictor: the backbone its checkpoint reads, the checkpoint, and how to sample it."""

    backbone: Backbone
    model: object
    settings: object

    def guess(self, loaded: list[LoadedPhoto], top_k: int) -> list[PhotoGuess]:
        """The photos' density modes: the most likely first, each with the share of samples nearest to it."""
        from geoloc.plonk.density import photo_densities

        vectors = self.backbone.embed([photo.image for photo in loaded])
        densities = photo_densities(self.model, vectors, replace(self.settings, modes=top_k))
        places = place_names(densities.modes[..., 0].ravel(), densities.modes[..., 1].ravel())
        places = places.reshape(densities.modes.shape[:2])
        at_sea = sea_flags(densities.modes[:, 0, 0], densities.modes[:, 0, 1])
        guesses = []
        for row, photo in enumerate(loaded):
            found = np.isfinite(densities.log_density[row])
            alternatives = [Alternative(float(lat), float(lon), float(share), str(place)) for (lat, lon), share, place
                            in zip(densities.modes[row][found], densities.share[row][found], places[row][found])]
            guesses.append(PhotoGuess(
                image=photo.label, image_id=photo.image_id, lat=alternatives[0].lat, lon=alternatives[0].lon,
                place=alternatives[0].place, radius_km=float(densities.radius_km[row]), candidates=alternatives,
                exif=photo.exif, at_sea=None if at_sea is None else bool(at_sea[row]),
                log_likelihood=float(densities.log_density[row, 0]),
                localizability=float(densities.localizability[row]), region_mass=self.settings.mass,
                region_km2=float(densities.area_km2[row])))
        return guesses


def load_plonk_locator(model: str, backbone: str | None, device: str, settings: object) -> PlonkLocator:
    """The checkpoint and the backbone it reads (its own by default); a backbone of another kind is refused."""
    from geoloc.encode.backbone import pick_device
    from geoloc.encode.loading import load_backbone
    from geoloc.plonk.model import PlonkUnavailable, embedding_identity, load_plonk

    plonk = load_plonk(model, pick_device(device))
    wanted = plonk.settings.embedding
    if backbone is not None and embedding_identity(backbone) != wanted:
        raise PlonkUnavailable(f"the PLONK model {model} conditions on {wanted!r} embeddings; --backbone "
                               f"{backbone} makes another kind (give {wanted}[:LOCAL_FOLDER])")
    encoder = load_backbone(backbone or wanted, device=device)
    encoder = encoder.with_features(plonk.settings.feature_kind or encoder.feature_kind)
    if encoder.dim != plonk.cond_dim:
        raise PlonkUnavailable(f"{encoder.name} makes {encoder.dim}-dimensional embeddings; the PLONK model "
                               f"{model} reads {plonk.cond_dim}")
    return PlonkLocator(encoder, plonk, settings)


def guess_images(loaded: list[LoadedPhoto], geoclip: GeoClip | PlonkLocator, top_k: int) -> list[PhotoGuess]:
    """One batch through GeoCLIP (or PLONK), with place names for every alternative."""
    if isinstance(geoclip, PlonkLocator):
        return geoclip.guess(loaded, top_k)
    result = geoclip.top_k(geoclip.backbone.pixel_values([photo.image for photo in loaded]), top_k)
    coordinates = result.coordinates.astype(np.float64)
    places = place_names(coordinates[..., 0].ravel(), coordinates[..., 1].ravel()).reshape(coordinates.shape[:2])
    at_sea = sea_flags(coordinates[:, 0, 0], coordinates[:, 0, 1])
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
            at_sea=None if at_sea is None else bool(at_sea[row]),
        ))
    return guesses


def guess_summary(guess: PhotoGuess) -> str:
    """The best guess's probability, and PLONK's likelihood, localizability and region where it has them."""
    summary = f"p = {guess.candidates[0].prob:.3f}"
    if guess.log_likelihood is None:
        return summary
    return (f"{summary}, log-likelihood {guess.log_likelihood:.2f}, localizability {guess.localizability:.3f}, "
            f"{guess.region_mass:.0%} region {guess.region_km2:,.0f} km²")


def predictions_table(guesses: list[PhotoGuess]) -> pl.DataFrame:
    """The predictions schema (image_id, lat, lon, score = the best guess's probability), and at_sea."""
    return pl.DataFrame(
        {
            "image_id": [g.image_id for g in guesses],
            "lat": [g.lat for g in guesses],
            "lon": [g.lon for g in guesses],
            "score": [g.candidates[0].prob for g in guesses],
            "at_sea": [g.at_sea for g in guesses],
        },
        schema={"image_id": pl.Utf8, "lat": pl.Float64, "lon": pl.Float64, "score": pl.Float64,
                "at_sea": pl.Boolean},
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


def predictions_geojson(guesses: list) -> dict:
    """A GeoJSON FeatureCollection: one Point per photo at its best guess, the rest as properties.

    Any answers with `image_id`, `lat`, `lon` and `as_json()`: GeoCLIP's, or a recipe's."""
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
