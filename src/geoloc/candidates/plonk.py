"""PLONK's candidates (source=plonk): each photo's density modes, scored by their exact log-likelihood.

The photos come as embeddings (`geoloc embed`) of the kind the checkpoint conditions on;
another kind is refused before any work, since the network would answer anything it is
fed. Beside the schema's columns each row carries its photo's region (`radius_km`,
`area_km2` at the stated `mass`) and `localizability`; `conform_candidates` keeps the
schema's columns only, so compiled tables stay as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.candidates import CANDIDATE_SCHEMA
from geoloc.embeddings import EmbeddingsError, feature_kind, open_embeddings
from geoloc.places import place_names
from geoloc.plonk.density import DensitySettings, PhotoDensities, photo_densities
from geoloc.plonk.model import EMBEDDINGS, PlonkModel, embedding_identity

REGION_SCHEMA = {"radius_km": pl.Float64, "area_km2": pl.Float64, "mass": pl.Float64, "localizability": pl.Float64}


def check_embeddings(model: PlonkModel, meta: dict, folder: Path) -> None:
    """Refuse embeddings the checkpoint was not trained on: another backbone, kind or width."""
    wanted = model.settings.embedding
    found = embedding_identity(meta.get("backbone"))
    kind = feature_kind(meta)
    if found != wanted or (model.settings.feature_kind and kind != model.settings.feature_kind):
        what = EMBEDDINGS.get(wanted, f"`geoloc embed --backbone {wanted}`")
        raise EmbeddingsError(f"{folder} holds {kind} {found!r} embeddings; the PLONK model {model.name} conditions "
                              f"on {model.settings.feature_kind or 'any'} {wanted!r} ones: {what}")
    if meta.get("dim") != model.cond_dim:
        raise EmbeddingsError(f"{folder} holds {meta.get('dim')}-dimensional embeddings; the PLONK model "
                              f"{model.name} reads {model.cond_dim}")


def candidates_table(ids: pl.Series, densities: PhotoDensities, mass: float) -> pl.DataFrame:
    """One row per mode found (rank 0 = the most likely), with place names and the photo's region."""
    photos, count = densities.log_density.shape
    found = np.isfinite(densities.log_density).ravel()
    lat, lon = densities.modes[..., 0].ravel()[found], densities.modes[..., 1].ravel()[found]
    photo = np.repeat(np.arange(photos), count)[found]
    table = pl.DataFrame({
        "query_id": ids.cast(pl.Utf8).to_numpy()[photo],
        "source": "plonk",
        "rank": np.tile(np.arange(count, dtype=np.int32), photos)[found],
        "lat": lat, "lon": lon,
        "score": densities.log_density.ravel()[found],
        "text": place_names(lat, lon) if len(lat) else np.array([], dtype=object),
        "ref_uri": None,
        "radius_km": densities.radius_km[photo],
        "area_km2": densities.area_km2[photo],
        "mass": mass,
        "localizability": densities.localizability[photo],
    }, schema_overrides={**CANDIDATE_SCHEMA, **REGION_SCHEMA})
    return table.select(*CANDIDATE_SCHEMA, *REGION_SCHEMA)


def plonk_candidates(model: PlonkModel, embeddings: Path, settings: DensitySettings, work: Path,
                     run_settings: dict, batch_photos: int = 256, restart: bool = False,
                     on_progress: Callable[[int], None] = lambda done: None) -> pl.DataFrame:
    """Candidates for every photo of an embeddings folder, `batch_photos` photos per pass on the device.

    Each embeddings part's candidates are kept in `work` as it finishes, so a rerun with the same
    `run_settings` (the model, the sampling) redoes only the parts not finished; the caller
    removes `work` once it has written the table. `on_progress(photos)` as parts finish or are found done.
    """
    from geoloc.resumable import Task, Workers, cache_paths, claim_work_folder, run_cached

    parts = open_embeddings(embeddings)
    check_embeddings(model, parts.meta, embeddings)
    claim_work_folder(work, {**run_settings, "density": vars(settings), "batch_photos": batch_photos,
                             "embeddings": {key: parts.meta.get(key) for key in ("backbone", "rows", "ids")}},
                      restart)

    def part_candidates(part: Path) -> pl.DataFrame:
        ids, vectors = parts.read_part(part)
        tables = [pl.DataFrame(schema={**CANDIDATE_SCHEMA, **REGION_SCHEMA})]
        for start in range(0, len(ids), batch_photos):
            batch = slice(start, start + batch_photos)
            tables.append(candidates_table(ids[batch], photo_densities(model, vectors[batch], settings),
                                           settings.mass))
            on_progress(len(ids[batch]))
        return pl.concat(tables)

    tasks = [Task(part.stem, part_candidates, (part,)) for part in parts.parts]
    on_progress(sum(pl.scan_parquet(part).select(pl.len()).collect().item()
                    for part, path in zip(parts.parts, cache_paths(tasks, work)) if path.is_file()))
    return pl.concat([pl.DataFrame(schema={**CANDIDATE_SCHEMA, **REGION_SCHEMA}),
                      *run_cached(tasks, work, Workers(1), None)])
