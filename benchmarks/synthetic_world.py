"""A synthetic world where the truth is known: does the classifier learn, and does the light ranker pick better
candidates than retrieval's first?

The generator (it makes no claim about real photos):

- Locations: the 100K real photo GPS locations shipped in the `geoclip` package (its
  gallery), shuffled and split into a gallery (with known coordinates: the retrieval
  gallery and the classifier's training set), training queries (the light ranker's
  training set) and test queries.
- A photo's "embedding" is a smooth random function of its location plus noise. The
  function is a sum over spatial scales (~5000, ~500, ~50 and ~5 km) of random Fourier
  features of the location's 3-D unit vector x: f_s(x) = A_s cos(W_s x + b_s) / sqrt(F),
  with W_s ~ N(0, sigma_s^2), sigma_s = Earth radius / scale (so f_s varies over about
  that distance), b_s ~ U(0, 2 pi), A_s ~ N(0, 1) of shape (F, D); the scales are
  weighted 1, 0.9, 0.8, 0.7. Each photo adds Gaussian noise of its own strength,
  log-uniform between 0.15 and 4 times the signal's (some photos say a lot about where
  they are, some almost nothing), and is L2-normalized.
- What a photo shows regardless of where (food, people, a car ...): one of 100 random
  "topics", a point in a random 24-dimensional subspace (plus a little spread), added
  with a strength drawn uniformly between 0 and 1.5 per photo, then the result is
  L2-normalized like CLIP embeddings. Cosine similarity confuses two photos of the same
  topic taken far apart; a ranker trained on true distances can learn to look past it.
- Cells: `geoloc cells build` on the gallery's catalog. Candidates per query: the 10
  nearest gallery photos by embedding (`geoloc.candidates.retrieval`) and the
  classifier's top 5 cells (`geoloc.classifier`).
- PLONK (`geoloc.plonk`) trained from scratch on the gallery's photos (Riemannian flow
  matching), its answer the most likely of `--plonk-samples` samples; its 90% regions'
  calibration: how often the truth lies in the highest-density region (its log density above
  the region's level) and in the circle around the answer holding 90% of the samples.
- GeoCLIP (`geoloc.geoclip`) trained from scratch on the gallery's photos (the
  classifier's training set) with GeoCLIP's settings, its gallery every distinct
  gallery location; its answer is the top-1 gallery location.
- Semantic cells (`--semantic-preset pigeotto`, the default; `none` skips them): PIGEON's
  cells (`geoloc cells build --method semantic`, on the installed boundaries) over the same
  gallery, and a second classifier trained on them with PIGEON's per-photo label
  smoothing (tau 65 km for pigeotto, 75 for pigeon); its top cell is scored beside the
  HDBSCAN classifier's as `classifier_semantic` (it does not feed the ranker).

Prints one JSON line: accuracy at 1 / 25 / 200 / 750 / 2500 km on the test queries for
`retrieval_top1`, `classifier` (its top cell), `classifier_semantic`, `geoclip` (trained from scratch),
`ranker` (the light ranker over the retrieval + classifier candidates) and `oracle`
(the best candidate), and whether the
goal holds: the ranker beats retrieval top-1 at 25 and 200 km and closes at least 30%
of the gap between retrieval top-1 and the oracle at 25 km.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from geoloc.candidates.geoclip import geoclip_gallery
from geoloc.evaluate import metrics_from_distances
from geoloc.geo import EARTH_RADIUS_KM, distance_km, to_unit_vectors

SCALES_KM = (5000.0, 500.0, 50.0, 5.0)
SCALE_WEIGHTS = (1.0, 0.9, 0.8, 0.7)
NOISE_RANGE = (0.15, 4.0)
TOPICS, TOPIC_RANK, TOPIC_STRENGTH = 100, 24, 1.5


def world_embeddings(lat: np.ndarray, lon: np.ndarray, dim: int, features: int, seed: int) -> np.ndarray:
    """Smooth random function of location at several scales, per-photo noise of varying strength, and a topic."""
    rng = np.random.default_rng(seed)
    world = np.random.default_rng(seed + 1)  # the function itself: the same for every photo
    xyz = to_unit_vectors(lat, lon)
    signal = np.zeros((len(lat), dim))
    for scale, weight in zip(SCALES_KM, SCALE_WEIGHTS):
        directions = world.normal(0.0, EARTH_RADIUS_KM / scale, size=(3, features))
        phases = world.uniform(0.0, 2 * np.pi, size=features)
        mixing = world.normal(size=(features, dim))
        signal += weight * (np.cos(xyz @ directions + phases) * np.sqrt(2.0 / features)) @ mixing
    signal /= np.sqrt(sum(w * w for w in SCALE_WEIGHTS))
    strength = np.exp(rng.uniform(*np.log(NOISE_RANGE), size=len(lat)))[:, None]
    vectors = signal + strength * rng.normal(size=signal.shape)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    basis = np.linalg.qr(world.normal(size=(dim, TOPIC_RANK)))[0]
    centres = world.normal(size=(TOPICS, TOPIC_RANK))
    topic = centres[rng.integers(0, TOPICS, len(lat))] + 0.3 * rng.normal(size=(len(lat), TOPIC_RANK))
    vectors += rng.uniform(0.0, TOPIC_STRENGTH, size=(len(lat), 1)) * (topic @ basis.T) / np.sqrt(TOPIC_RANK)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def accuracy(distances: np.ndarray) -> dict[str, float]:
    metrics = metrics_from_distances(distances)
    return {key: round(value, 4) for key, value in metrics.items() if key.startswith("acc_")}


def geoclip_distances(vectors: np.ndarray, lat: np.ndarray, lon: np.ndarray, splits: dict[str, slice], epochs: int,
                      seed: int, say) -> np.ndarray:
    """GeoCLIP trained from scratch on the gallery split; each test query's error at its top-1 gallery location."""
    from geoloc.geoclip import top1_locations
    from geoloc.geoclip.release import gallery_features, sample_gallery
    from geoloc.geoclip.training import TrainSettings, new_state, train_epochs

    train, test = splits["gallery"], splits["test"]
    coordinates = np.column_stack([lat, lon])
    settings = TrainSettings(epochs=epochs, seed=seed, image_dim=vectors.shape[1])
    started = time.perf_counter()
    state = train_epochs(new_state(settings), vectors[train], coordinates[train], settings,
                         lambda state: say(f"geoclip epoch {state.epochs_done}: loss {state.losses[-1]:.3f}"))
    gallery = sample_gallery(lat[train], lon[train], len(lat))
    guess = top1_locations(state.model, gallery_features(state.model.location_encoder, gallery), gallery,
                           vectors[test])
    say(f"geoclip: {epochs} epoch(s) in {time.perf_counter() - started:.0f} s, gallery {len(gallery):,}")
    return distance_km(guess[:, 0], guess[:, 1], lat[test], lon[test])


def semantic_classifier(root: Path, args: argparse.Namespace, say):
    """Semantic cells over the gallery and a classifier with PIGEON's smoothing; returns its top-1 predictor."""
    from geoloc.cells.semantic_build import SemanticOptions, build_semantic_cells
    from geoloc.classifier import ClassifierSettings, classifier_candidates, train_classifier
    from geoloc.fitting import FitSettings

    cells = build_semantic_cells(root / "catalog", root / "semantic-cells", SemanticOptions(args.semantic_preset),
                                 on_step=say)
    say(f"semantic cells: {cells.cells_per_level[0]} ({cells.seconds:.0f} s)")
    tau = {"pigeotto": 65.0, "pigeon": 75.0}[args.semantic_preset]
    train_classifier(root / "semantic-cells", root / "gallery-embeddings", root / "catalog", root / "semantic",
                     ClassifierSettings(hidden=256, label_smoothing_km=tau,
                                        fit=FitSettings(epochs=args.classifier_epochs, batch_size=512,
                                                        learning_rate=2e-3, seed=args.seed)), say)
    return lambda query_ids, query_vectors: classifier_candidates(query_ids, query_vectors, root / "semantic",
                                                                  top_k=1)


def candidate_methods(args: argparse.Namespace, ids: np.ndarray, lat: np.ndarray, lon: np.ndarray,
                      vectors: np.ndarray, splits: dict[str, slice], say) -> dict:
    """Retrieval, the classifier, the light ranker over their candidates, and the oracle, on the test queries."""
    from geoloc.candidates.retrieval import retrieval_candidates
    from geoloc.cells import CellsOptions, build_cells
    from geoloc.classifier import ClassifierSettings, classifier_candidates, train_classifier
    from geoloc.embeddings import write_embeddings
    from geoloc.fitting import FitSettings
    from geoloc.index import GalleryIndex, build_faiss_index, plan_index
    from geoloc.rank.light import LightTrainConfig, Lookups, build_groups, fit_light_ranker, rank_light

    gallery_end, train_end = splits["gallery"].stop, splits["train"].stop
    with tempfile.TemporaryDirectory(prefix="synthetic-world-") as folder:
        root = Path(folder)
        gallery = pl.DataFrame({"image_id": ids[splits["gallery"]], "uri": ids[splits["gallery"]],
                                "lat": lat[splits["gallery"]], "lon": lon[splits["gallery"]], "source": "csv",
                                "text": None}, schema_overrides={"text": pl.Utf8})
        (root / "catalog").mkdir()
        gallery.drop("text").write_parquet(root / "catalog" / "catalog.parquet")
        for name, part in splits.items():
            write_embeddings(root / f"{name}-embeddings", ids[part].tolist(), vectors[part], "synthetic-world")
        cells = build_cells(root / "catalog", root / "cells", CellsOptions(levels=3))
        say(f"cells per level: {cells.cells_per_level} ({cells.seconds:.0f} s)")
        train_classifier(root / "cells", root / "gallery-embeddings", root / "catalog", root / "classifier",
                         ClassifierSettings(hidden=256, fit=FitSettings(epochs=args.classifier_epochs, batch_size=512,
                                                            learning_rate=2e-3, seed=args.seed)), say)
        semantic = None
        if args.semantic_preset != "none":
            semantic = semantic_classifier(root, args, say)(ids[splits["test"]].tolist(), vectors[splits["test"]])
        plan = plan_index(gallery_end, args.dim, "flat")
        index = GalleryIndex(build_faiss_index(vectors[splits["gallery"]], plan), gallery, {"dim": args.dim})

        def candidates(split: str) -> pl.DataFrame:
            part = splits[split]
            return pl.concat([
                retrieval_candidates(index, ids[part].tolist(), vectors[part], 10),
                classifier_candidates(ids[part].tolist(), vectors[part], root / "classifier", top_k=5),
            ])

        truth = pl.DataFrame({"image_id": ids, "lat": lat, "lon": lon})
        config = LightTrainConfig(candidates=root, truth=root, query_embeddings=root, output=root, group_size=15,
                                  hidden=args.ranker_hidden,
                                  top_k=1, consensus_km=(5.0, 25.0, 100.0, 750.0),
                                  training=FitSettings(epochs=args.ranker_epochs, batch_size=256, learning_rate=2e-3,
                                                       seed=args.seed))
        train_groups, _ = build_groups(candidates("train"), Lookups(root / "train-embeddings",
                                                                   root / "gallery-embeddings"), 15, truth)
        ranker = fit_light_ranker(train_groups, config, "synthetic-world", say).model
        test = candidates("test")
        predictions = rank_light(test, ranker, Lookups(root / "test-embeddings", root / "gallery-embeddings"))

    test_truth = truth.slice(train_end)
    joined = test.join(test_truth.rename({"lat": "true_lat", "lon": "true_lon"}), left_on="query_id",
                       right_on="image_id")
    distance = joined.with_columns(km=distance_km(joined["lat"], joined["lon"], joined["true_lat"], joined["true_lon"]))

    def per_query(frame: pl.DataFrame) -> np.ndarray:
        """One distance per test query, in truth order, NaN where the frame has none."""
        found = test_truth.join(frame.rename({"query_id": "image_id"}), on="image_id", how="left",
                                maintain_order="left")
        return found["km"].fill_null(np.nan).to_numpy()

    first = lambda source: distance.filter((pl.col("source") == source) & (pl.col("rank") == 0))  # noqa: E731
    ranked = test_truth.join(predictions, on="image_id", how="left", suffix="_pred", maintain_order="left")
    ranker_km = distance_km(ranked["lat"], ranked["lon"], ranked["lat_pred"], ranked["lon_pred"])
    figures = {
        "retrieval_top1": accuracy(per_query(first("retrieval").select("query_id", "km"))),
        "classifier": accuracy(per_query(first("classifier").select("query_id", "km"))),
        "classifier_semantic": None if semantic is None else accuracy(distance_km(
            semantic["lat"], semantic["lon"], test_truth["lat"], test_truth["lon"])),
        "ranker": accuracy(ranker_km),
        "oracle": accuracy(per_query(distance.group_by("query_id").agg(pl.col("km").min()))),
    }
    retrieval, best, ours = (figures[name] for name in ("retrieval_top1", "oracle", "ranker"))
    gap = best["acc_25km"] - retrieval["acc_25km"]
    closed = (ours["acc_25km"] - retrieval["acc_25km"]) / gap if gap > 0 else 0.0
    figures["gap_closed_25km"] = round(closed, 3)
    figures["goal_met"] = bool(ours["acc_25km"] > retrieval["acc_25km"] and ours["acc_200km"] > retrieval["acc_200km"]
                               and closed >= 0.3)
    return figures


def plonk_figures(vectors: np.ndarray, lat: np.ndarray, lon: np.ndarray, splits: dict[str, slice],
                  args: argparse.Namespace, say) -> dict:
    """PLONK trained from scratch on the gallery split: accuracy of its best mode, and its 90% regions' coverage."""
    import torch

    from geoloc.fitting import FitSettings
    from geoloc.geo import to_unit_vectors
    from geoloc.plonk.density import DensitySettings, photo_densities
    from geoloc.plonk.model import PlonkSettings
    from geoloc.plonk.network import NetworkConfig
    from geoloc.plonk.sampling import log_likelihood, to_points
    from geoloc.plonk.training import train_plonk

    train, test = splits["gallery"], splits["test"]
    started = time.perf_counter()
    config = NetworkConfig(dim=args.plonk_dim, depth=args.plonk_depth, cond_dim=vectors.shape[1])
    model, _ = train_plonk(vectors[train], to_unit_vectors(lat[train], lon[train]), config,
                           PlonkSettings("riemannian_flow", "synthetic"),
                           FitSettings(epochs=args.plonk_epochs, batch_size=1024, learning_rate=1e-3, seed=args.seed),
                           say=say)
    densities = photo_densities(model, vectors[test], DensitySettings(samples=args.plonk_samples,
                                                                      steps=args.plonk_steps, modes=1))
    truth = to_points(torch.from_numpy(np.column_stack([lat[test], lon[test]])))
    truth_density = log_likelihood(model.network, model.settings.schedule,
                                   torch.as_tensor(vectors[test], dtype=torch.float32), truth).double().numpy()
    errors = distance_km(densities.modes[:, 0, 0], densities.modes[:, 0, 1], lat[test], lon[test])
    say(f"plonk: {args.plonk_epochs} epoch(s), sampled in {time.perf_counter() - started:.0f} s in all")
    return {**accuracy(errors), "region_mass": 0.9,
            "truth_in_density_region": round(float(np.mean(truth_density >= densities.level)), 4),
            "truth_in_radius": round(float(np.mean(errors <= densities.radius_km)), 4),
            "median_region_km2": round(float(np.median(densities.area_km2)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=100_000, help="locations used from the geoclip gallery")
    parser.add_argument("--gallery-share", type=float, default=0.5)
    parser.add_argument("--test", type=int, default=10_000, help="test queries")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--features", type=int, default=256, help="random Fourier features per scale")
    parser.add_argument("--classifier-epochs", type=int, default=4)
    parser.add_argument("--ranker-epochs", type=int, default=12)
    parser.add_argument("--ranker-hidden", type=int, default=256)
    parser.add_argument("--geoclip-epochs", type=int, default=10, help="GeoCLIP's own: 10")
    parser.add_argument("--only-geoclip", action="store_true", help="GeoCLIP alone, in the same world and split "
                        "(the other methods need no GPU; GeoCLIP trains faster on one)")
    parser.add_argument("--plonk-epochs", type=int, default=0, help="PLONK trained from scratch (0: left out)")
    parser.add_argument("--plonk-dim", type=int, default=256)
    parser.add_argument("--plonk-depth", type=int, default=6)
    parser.add_argument("--plonk-samples", type=int, default=64)
    parser.add_argument("--plonk-steps", type=int, default=100)
    parser.add_argument("--semantic-preset", choices=["pigeotto", "pigeon", "none"], default="pigeotto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731

    coordinates = geoclip_gallery()[np.random.default_rng(args.seed).permutation(100_000)[:args.photos]]
    lat, lon = coordinates[:, 0].astype(np.float64), coordinates[:, 1].astype(np.float64)
    vectors = world_embeddings(lat, lon, args.dim, args.features, args.seed)
    ids = np.array([f"p{i:06d}" for i in range(len(lat))], dtype=object)
    gallery_end = int(args.gallery_share * len(lat))
    train_end = len(lat) - args.test
    splits = {"gallery": slice(0, gallery_end), "train": slice(gallery_end, train_end), "test": slice(train_end, None)}
    say(f"world: {len(lat):,} photos, {gallery_end:,} gallery, {train_end - gallery_end:,} training queries, "
        f"{args.test:,} test queries, {args.dim}-d")

    figures = {} if args.only_geoclip else candidate_methods(args, ids, lat, lon, vectors, splits, say)
    if args.plonk_epochs:
        figures["plonk"] = plonk_figures(vectors, lat, lon, splits, args, say)
    figures["geoclip"] = accuracy(geoclip_distances(vectors, lat, lon, splits, args.geoclip_epochs, args.seed, say))
    figures["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
