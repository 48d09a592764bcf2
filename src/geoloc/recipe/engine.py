"""A recipe run in one process: each model loaded once, photos through each stage in batches.

Every stage calls the library function its own command calls (`geoloc candidates geoclip`,
`geoloc retrieve`, `geoloc classifier predict`, `geoloc candidates zeroshot`, `geoloc
candidates compile`, `geoloc ranker score`), so a recipe gives the candidates and the
answer those commands give run one after the other; only the files between them are gone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.errors import InputError
from geoloc.images import Photo
from geoloc.images.decoding import UNREADABLE, decode_photo, unreadable_reason
from geoloc.predict import LoadedPhoto, Unreadable, exif_position
from geoloc.recipe import Recipe, RecipeError


@dataclass(frozen=True)
class Candidate:
    source: str
    rank: int
    lat: float
    lon: float
    score: float | None
    place: str


@dataclass(frozen=True)
class RecipeAnswer:
    """One photo's answer through a recipe: the winner, where every source put the photo, the region."""

    image: str
    image_id: str
    lat: float
    lon: float
    place: str
    source: str
    """The source of the candidate the ranker chose."""
    score: float | None
    """The ranker's reward for it (`ranker: none`: the source's own score)."""
    radius_km: float
    candidates: list[Candidate]
    exif: dict | None

    def as_json(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "image_id"}

    @classmethod
    def from_json(cls, values: dict) -> RecipeAnswer:
        return cls(**{**values, "candidates": [Candidate(**c) for c in values["candidates"]]})


@dataclass(frozen=True)
class Readable:
    photo: Photo
    exif: dict | None


class RecipeEngine:
    """The recipe's models, loaded at first need and kept; `answer` takes photos in batches."""

    def __init__(self, recipe: Recipe, write_nothing: bool = False) -> None:
        self.recipe = recipe
        self.write_nothing = write_nothing
        """The web app's engine: zero-shot answers are kept in memory for one photo, not in the on-disk cache."""
        self._backbones: dict[str, object] = {}

    def backbone(self, name: str):
        """One loaded copy per backbone name, shared by every stage that embeds with it."""
        from geoloc.encode.loading import load_backbone

        if name not in self._backbones:
            self._backbones[name] = load_backbone(name, device=self.recipe.device)
        return self._backbones[name]

    @functools.cached_property
    def geoclip(self):
        from geoloc.candidates.geoclip import GeoClip, geoclip_backbone

        settings = self.recipe.sources.geoclip
        return GeoClip(self.backbone(geoclip_backbone(settings.backbone, settings.model)), release=settings.model)

    @functools.cached_property
    def gallery(self):
        from geoloc.index import GalleryIndex

        return GalleryIndex.load(self.recipe.sources.retrieval.index)

    @functools.cached_property
    def classifier(self):
        from geoloc.classifier.model import load_classifier

        return load_classifier(self.recipe.sources.classifier.model)

    @functools.cached_property
    def light_ranker(self):
        from geoloc.rank.light import load_light_ranker

        return load_light_ranker(self.recipe.ranker.model)

    @functools.cached_property
    def reward_scorer(self):
        from geoloc.rank.model import ModelLoadError, adapter_base
        from geoloc.rank.ranking import default_device, lazy_reward_scorer
        from geoloc.resumable import Share

        ranker = self.recipe.ranker
        base = ranker.base or adapter_base(ranker.adapter)
        if not base:
            raise ModelLoadError(f"{ranker.adapter}: the adapter does not record its base model; give ranker.base")
        device = default_device(Share()) if self.recipe.device == "auto" else self.recipe.device
        return lazy_reward_scorer(base, ranker.adapter, ranker.dtype, device, ranker.batch_size,
                                  ranker.shared_prefix)()

    def load(self) -> None:
        """Load every model now (a server answers its first photo as fast as the rest)."""
        recipe = self.recipe
        if recipe.sources.geoclip is not None:
            _ = self.geoclip
        if recipe.sources.retrieval is not None:
            self.backbone(recipe.sources.retrieval.backbone or self.gallery.info["backbone"])
        classifier = recipe.sources.classifier
        if classifier is not None and (classifier.backbone or self.classifier[0].config.backbone):
            self.backbone(classifier.backbone or self.classifier[0].config.backbone)
        if recipe.ranker.kind == "light":
            self.backbone(self.light_backbone())
        if recipe.ranker.kind == "georanker":
            _ = self.reward_scorer

    def answer(self, photos: list[Photo], on_progress: Callable[[int], None] = lambda done: None,
               ) -> list[RecipeAnswer | Unreadable]:
        """Every photo's answer in order; an unreadable photo is reported, the rest go on."""
        readable, failures = [], {}
        for photo in photos:
            try:
                data = photo.read_bytes()
                decode_photo(data)
                readable.append(Readable(photo, exif_position(data)))
            except UNREADABLE as error:
                failures[photo.query_id] = Unreadable(str(photo.path), unreadable_reason(error))
        answers = iter(self._answer_readable(readable) if readable else [])
        result = [failures.get(photo.query_id) or next(answers) for photo in photos]
        on_progress(len(photos))
        return result

    def _answer_readable(self, readable: list[Readable]) -> list[RecipeAnswer | Unreadable]:
        photos = [item.photo for item in readable]
        stages = Stages(self, photos)
        candidates = stages.candidates()
        predictions = self.rank(candidates, photos, stages)
        return answers_of(readable, candidates, predictions, self.recipe, stages.geoclip_radius)

    def candidates(self, photos: list[Photo]) -> pl.DataFrame:
        """The merged candidates of every source (`geoloc candidates compile`'s table)."""
        return Stages(self, photos).candidates()

    def rank(self, candidates: pl.DataFrame, photos: list[Photo], stages: Stages | None = None) -> pl.DataFrame:
        """Predictions (image_id, lat, lon, score, source) by the recipe's ranker."""
        kind = self.recipe.ranker.kind
        if kind == "none":
            return first_source_best(candidates, self.recipe.source_names())
        if kind == "light":
            return self._rank_light(candidates, photos, stages or Stages(self, photos))
        return self._rank_georanker(candidates, photos)

    def light_backbone(self) -> str:
        backbone = self.light_ranker.config.backbone
        if backbone is None:
            raise RecipeError(f"{self.recipe.ranker.model}: the light ranker does not record the backbone of its "
                              "query embeddings; a recipe cannot embed its photos for it")
        return backbone

    def _rank_light(self, candidates: pl.DataFrame, photos: list[Photo], stages: Stages) -> pl.DataFrame:
        from geoloc.rank.light import Lookups, QueryVectors, rank_light
        from geoloc.rank.ranking import select_candidates

        ranker = self.recipe.ranker
        name = self.light_backbone()
        vectors, _ = stages.vectors(name)
        lookups = Lookups(QueryVectors([photo.query_id for photo in photos], vectors, name), ranker.gallery_embeddings,
                          ranker.gallery_table, ranker.text_embeddings)
        scored, _ = select_candidates(candidates, ranker.top, 0)
        return with_winning_source(rank_light(scored, self.light_ranker, lookups), candidates)

    def _rank_georanker(self, candidates: pl.DataFrame, photos: list[Photo]) -> pl.DataFrame:
        from geoloc.rank.photos import GEORANKER_GALLERY, GEORANKER_QUERY, RAW, StorePhotos, prepare_photo
        from geoloc.rank.ranking import predictions_of, query_candidates, score_queries, select_candidates

        ranker = self.recipe.ranker
        by_id = {photo.query_id: photo for photo in photos}

        def open_query(query_id: str):
            return prepare_photo(by_id[query_id].read_bytes(), RAW if ranker.raw_photos else GEORANKER_QUERY)

        gallery = (StorePhotos(ranker.gallery, ranker.gallery_index,
                               preparation=RAW if ranker.raw_photos else GEORANKER_GALLERY)
                   if ranker.gallery is not None else _no_gallery)
        scored, negatives = select_candidates(candidates, ranker.top, ranker.negatives)
        negatives_by_query = negatives.partition_by("query_id", as_dict=True, include_key=False)
        results = score_queries(query_candidates(scored), negatives_by_query, self.reward_scorer, open_query, gallery)
        predictions, _ = predictions_of(results)
        return with_winning_source(predictions, candidates)


def engine_guesser(engine: RecipeEngine) -> Callable[[list[LoadedPhoto]], list[RecipeAnswer | Unreadable]]:
    """The web app's model: decoded uploads (their bytes kept in memory, never on disk) through the recipe."""

    def guess(loaded: list[LoadedPhoto]) -> list[RecipeAnswer | Unreadable]:
        return engine.answer([Photo(photo.image_id, Path(photo.label), data=photo.data) for photo in loaded])

    return guess


def _no_gallery(uri: str):
    raise InputError(f"{uri}: the recipe names no ranker.gallery to read gallery photos from")


class Stages:
    """One batch of photos through the sources; embeddings made once per backbone and shared."""

    def __init__(self, engine: RecipeEngine, photos: list[Photo]) -> None:
        self.engine, self.photos = engine, photos
        self._vectors: dict[str, tuple[np.ndarray, list[str | None]]] = {}
        self.geoclip_radius: dict[str, float] = {}

    def vectors(self, backbone: str) -> tuple[np.ndarray, list[str | None]]:
        """The photos' embeddings by `backbone` (as `geoloc embed` makes them), made once."""
        from geoloc.encode import embed_batches
        from geoloc.images.discovery import photos_reader

        if backbone not in self._vectors:
            self._vectors[backbone] = embed_batches(*photos_reader(self.photos), self.engine.backbone(backbone),
                                                    self.engine.recipe.batch_size)
        return self._vectors[backbone]

    def candidates(self) -> pl.DataFrame:
        from geoloc.candidates.compile import merge_candidates

        tables: dict[str, pl.DataFrame] = {}
        for name in source_order(self.engine.recipe):
            tables[name] = self.source(name, tables)
        return merge_candidates([tables[name] for name in self.engine.recipe.source_names()])

    def source(self, name: str, tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
        """One source's candidates for the photos; `tables` holds the sources made before (RAG reads retrieval)."""
        make = {"geoclip": self._geoclip, "retrieval": self._retrieval, "classifier": self._classifier,
                "zeroshot": self._zeroshot}
        return make[name](tables)

    def keep_vectors(self, backbone: str, vectors: np.ndarray, problems: list[str | None]) -> None:
        """Embeddings made before (a batch run keeps them in its work folder)."""
        self._vectors[backbone] = (vectors, problems)

    def made_vectors(self) -> dict[str, tuple[np.ndarray, list[str | None]]]:
        return dict(self._vectors)

    def _geoclip(self, tables: dict) -> pl.DataFrame:
        from geoloc.predict import PhotoGuess, geoclip_candidates, guess_photos

        settings = self.engine.recipe.sources.geoclip
        guesses = [guess for guess in guess_photos(self.photos, self.engine.geoclip, settings.top_k,
                                                   self.engine.recipe.batch_size) if isinstance(guess, PhotoGuess)]
        self.geoclip_radius = {guess.image_id: guess.radius_km for guess in guesses}
        return geoclip_candidates(guesses)

    def _retrieval(self, tables: dict) -> pl.DataFrame:
        from geoloc.candidates.retrieval import retrieve_photos

        settings, engine = self.engine.recipe.sources.retrieval, self.engine
        name = settings.backbone or engine.gallery.info["backbone"]
        retrieved = retrieve_photos(self.photos, engine.gallery, engine.backbone(name), settings.k, settings.reverse,
                                    engine.recipe.batch_size)
        self._vectors[name] = (retrieved.vectors, retrieved.problems)
        return retrieved.candidates

    def _classifier(self, tables: dict) -> pl.DataFrame:
        from geoloc.classifier import classifier_candidates

        settings = self.engine.recipe.sources.classifier
        name = settings.backbone or self.engine.classifier[0].config.backbone
        if name is None:
            raise RecipeError(f"{settings.model}: the classifier does not record its backbone; give "
                              "sources.classifier.backbone")
        vectors, problems = self.vectors(name)
        readable = [row for row, problem in enumerate(problems) if problem is None]
        return classifier_candidates([self.photos[row].query_id for row in readable], vectors[readable],
                                     settings.model, settings.top_k, settings.nearest, self.engine.classifier)

    def _zeroshot(self, tables: dict) -> pl.DataFrame:
        from geoloc.candidates.compile import zeroshot_candidates
        from geoloc.candidates.zeroshot import (
            MEMORY_ONLY,
            Neighbours,
            ask_zeroshot,
            default_cache_path,
            zeroshot_settings,
        )

        settings = self.engine.recipe.sources.zeroshot
        ks = sorted(set(settings.rag))
        given = {"samples": settings.samples, "answers_per_request": settings.answers_per_request,
                 "temperature": settings.temperature, "max_tokens": settings.max_tokens, "detail": settings.detail}
        request = zeroshot_settings(settings.model, settings.base_url, settings.preset, ks, given,
                                    concurrency=settings.concurrency, max_retries=settings.max_retries,
                                    timeout_s=settings.timeout_s, allow_http=settings.allow_http)
        near = Neighbours(tables["retrieval"], "the recipe's retrieval", ks[-1]) if ks[-1] > 0 else None
        cache = MEMORY_ONLY if self.engine.write_nothing else settings.cache or default_cache_path()
        answers = ask_zeroshot(self.photos, request, cache, rag=ks, neighbours=near)
        table, _ = zeroshot_candidates([(answers.table, Path("zeroshot answers"))])
        return table


def source_order(recipe: Recipe) -> list[str]:
    """The order the sources run in: the file's, with zeroshot last (its RAG prompts read retrieval)."""
    return sorted(recipe.source_names(), key=lambda source: source == "zeroshot")


def first_source_best(candidates: pl.DataFrame, order: list[str]) -> pl.DataFrame:
    """`ranker: none`: per photo, the best-ranked candidate of the first source (in the recipe's order) that
    has one; scores of different sources are not comparable, so none is compared across sources."""
    position = pl.col("source").replace_strict({name: i for i, name in enumerate(order)}, default=len(order))
    best = candidates.sort("query_id", position, "rank").group_by("query_id", maintain_order=True).first()
    return best.select(pl.col("query_id").alias("image_id"), "lat", "lon", "score", "source")


def with_winning_source(predictions: pl.DataFrame, candidates: pl.DataFrame) -> pl.DataFrame:
    """The predictions with the source of the candidate each one is (the first of equal places, by rank)."""
    places = (candidates.sort("rank").unique(["query_id", "lat", "lon"], keep="first", maintain_order=True)
              .select(pl.col("query_id").alias("image_id"), "lat", "lon", "source"))
    return predictions.join(places, on=["image_id", "lat", "lon"], how="left", maintain_order="left")


def candidates_radius_km(lat: float, lon: float, table: pl.DataFrame, share: float) -> float:
    """The distance from (lat, lon) within which `share` of the candidates lie."""
    from geoloc.geo import great_circle_km

    distances = np.sort(great_circle_km(lat, lon, table["lat"].to_numpy(), table["lon"].to_numpy()))
    return float(distances[min(int(np.ceil(share * len(distances))) - 1, len(distances) - 1)]) if len(distances) \
        else 0.0


def answers_of(readable: list[Readable], candidates: pl.DataFrame, predictions: pl.DataFrame, recipe: Recipe,
               geoclip_radius: dict[str, float]) -> list[RecipeAnswer | Unreadable]:
    """Answers with place names for the winner and every candidate, and the confidence radius."""
    from geoloc.places import place_names

    places = place_names(candidates["lat"].to_numpy(), candidates["lon"].to_numpy())
    candidates = candidates.with_columns(pl.Series("place", places, dtype=pl.Utf8))
    by_query = candidates.partition_by("query_id", as_dict=True, maintain_order=True)
    won = {row["image_id"]: row for row in predictions.iter_rows(named=True)}
    answers = []
    for item in readable:
        query_id = item.photo.query_id
        table = by_query.get((query_id,), candidates.clear())
        listed = [Candidate(row["source"], row["rank"], row["lat"], row["lon"], row["score"], row["place"])
                  for row in table.iter_rows(named=True)]
        winner = won.get(query_id)
        if winner is None:
            answers.append(Unreadable(str(item.photo.path), "no source gave a candidate the ranker could score"))
            continue
        radius = (geoclip_radius.get(query_id, float("nan")) if recipe.region.kind == "geoclip"
                  else candidates_radius_km(winner["lat"], winner["lon"], table, recipe.region.share))
        answers.append(RecipeAnswer(str(item.photo.path), query_id, winner["lat"], winner["lon"],
                                    str(place_names([winner["lat"]], [winner["lon"]])[0]), winner["source"],
                                    winner["score"], radius, listed, item.exif))
    return answers


def answers_table(answers: list[RecipeAnswer | Unreadable]) -> pl.DataFrame:
    """Answers as a table that keeps every detail (one JSON object per photo): a resumable run's part."""
    import json

    records = [{"answer": {**answer.as_json(), "image_id": answer.image_id}} if isinstance(answer, RecipeAnswer)
               else {"unreadable": asdict(answer)} for answer in answers]
    return pl.DataFrame({"answer": [json.dumps(record) for record in records]}, schema={"answer": pl.Utf8})


def answers_from_table(table: pl.DataFrame) -> list[RecipeAnswer | Unreadable]:
    """The answers `answers_table` holds, exactly (JSON keeps every float)."""
    import json

    records = map(json.loads, table["answer"])
    return [Unreadable(**record["unreadable"]) if "unreadable" in record else RecipeAnswer.from_json(record["answer"])
            for record in records]


def predictions_table(answers: list[RecipeAnswer]) -> pl.DataFrame:
    """The predictions schema (image_id, lat, lon, score = the ranker's reward), as `geoloc ranker score` writes."""
    return pl.DataFrame({"image_id": [a.image_id for a in answers], "lat": [a.lat for a in answers],
                         "lon": [a.lon for a in answers], "score": [a.score for a in answers]},
                        schema={"image_id": pl.Utf8, "lat": pl.Float64, "lon": pl.Float64, "score": pl.Float64})
