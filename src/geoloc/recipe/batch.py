"""`geoloc run`: a recipe over a folder of photos, each stage's table kept in a work folder.

Each table is named by a key of everything that made it: the photos, the stage's settings
and models, and the keys of the stages it reads. A rerun reuses every table whose key is
unchanged, so changing the ranker reruns only the ranking and changing a source reruns
that source and what reads it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.images import Photo
from geoloc.recipe import Recipe, recipe_identity
from geoloc.recipe.engine import RecipeEngine, Stages, source_order
from geoloc.resumable import cache_key
from geoloc.tables import read_table, write_table


@dataclass
class RunReport:
    predictions: pl.DataFrame
    ran: list[str] = field(default_factory=list)
    """The stages computed this run (the others' tables were reused)."""
    reused: list[str] = field(default_factory=list)


def _stage(work: Path, name: str, key: str, make: Callable[[], pl.DataFrame], report: RunReport) -> pl.DataFrame:
    """The stage's table from the work folder when its key is there, else made and kept."""
    path = work / f"{name}-{key}.parquet"
    if path.is_file():
        report.reused.append(name)
        return read_table(path)
    table = make()
    write_table(table, path)
    report.ran.append(name)
    return table


def _vectors_table(photos: list[Photo], vectors: np.ndarray, problems: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame({"query_id": [photo.query_id for photo in photos], "embedding": list(vectors),
                         "error": problems}, schema={"query_id": pl.Utf8, "embedding": pl.List(pl.Float32),
                                                     "error": pl.Utf8})


def run_recipe(recipe: Recipe, photos: list[Photo], work: Path, engine: RecipeEngine | None = None) -> RunReport:
    """Every source's table, the merged candidates and the ranking, each made only when its key is new."""
    from geoloc.candidates.compile import merge_candidates
    from geoloc.predict import photos_fingerprint

    engine = engine or RecipeEngine(recipe)
    stages = Stages(engine, photos)
    work.mkdir(parents=True, exist_ok=True)
    photos_key = photos_fingerprint(photos)
    report = RunReport(pl.DataFrame())
    keys: dict[str, str] = {}
    tables: dict[str, pl.DataFrame] = {}
    for name in source_order(recipe):
        settings = getattr(recipe.sources, name)
        reads = keys.get("retrieval") if name == "zeroshot" and max(settings.rag) > 0 else None
        keys[name] = cache_key(photos_key, json.dumps(recipe_identity(settings), sort_keys=True), reads,
                               recipe.batch_size, recipe.device)
        tables[name] = _stage(work, name, keys[name], functools.partial(stages.source, name, tables), report)
    candidates = merge_candidates([tables[name] for name in recipe.source_names()])
    ranker_key = cache_key(*(keys[name] for name in recipe.source_names()),
                           json.dumps(recipe_identity(recipe.ranker), sort_keys=True))
    if recipe.ranker.kind == "light":
        _embeddings_for_light_ranker(engine, stages, photos, photos_key, work, report)
    report.predictions = _stage(work, "ranking", ranker_key, lambda: engine.rank(candidates, photos, stages), report)
    return report


def _embeddings_for_light_ranker(engine: RecipeEngine, stages: Stages, photos: list[Photo], photos_key: str,
                                 work: Path, report: RunReport) -> None:
    """The query photos' embeddings by the light ranker's backbone: kept, made by retrieval, or made now."""
    from geoloc.resumable import model_identity

    backbone = engine.light_backbone()
    key = cache_key(photos_key, json.dumps(model_identity(backbone), sort_keys=True), engine.recipe.batch_size,
                    engine.recipe.device)
    made = stages.made_vectors()

    def embed() -> pl.DataFrame:
        return _vectors_table(photos, *(made[backbone] if backbone in made else stages.vectors(backbone)))

    table = _stage(work, "embed", key, embed, report)
    stages.keep_vectors(backbone, np.array(table["embedding"].to_list(), dtype=np.float32).reshape(len(table), -1),
                        table["error"].to_list())
