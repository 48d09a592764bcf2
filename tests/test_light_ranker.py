"""The light ranker learns to pick nearer candidates on a small synthetic world, round-trips, runs by CLI."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from small_world import make_world
from typer.testing import CliRunner

from geoloc.candidates import conform_candidates
from geoloc.candidates.retrieval import retrieval_candidates
from geoloc.cli import app
from geoloc.evaluate import evaluate_files
from geoloc.fitting import FitSettings
from geoloc.geo import distance_km
from geoloc.index import GalleryIndex, build_faiss_index, plan_index
from geoloc.rank.light import (
    LightRanker,
    LightTrainConfig,
    Lookups,
    build_groups,
    fit_light_ranker,
    is_light_ranker,
    load_light_ranker,
    rank_light,
    save_light_ranker,
    score_groups,
)

GROUP = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = make_world(tmp_path_factory.mktemp("world"), photos=2000, queries=500, towns=30)
    part = world.splits["gallery"]
    gallery = pl.DataFrame({"image_id": world.ids[part].tolist(), "uri": world.ids[part].tolist(),
                            "lat": world.lat[part], "lon": world.lon[part], "text": None},
                           schema_overrides={"text": pl.Utf8})
    index = GalleryIndex(build_faiss_index(world.vectors[part], plan_index(2000, 32, "flat")), gallery, {"dim": 32})
    for split in ("train", "test"):
        part = world.splits[split]
        frame = retrieval_candidates(index, world.ids[part].tolist(), world.vectors[part], GROUP)
        frame.write_parquet(world.root / f"{split}-candidates.parquet")
        world.truth(split).write_parquet(world.root / f"{split}-truth.parquet")
    return world


def _config(world, **changes) -> LightTrainConfig:
    values = dict(candidates=world.root / "train-candidates.parquet", truth=world.root / "train-truth.parquet",
                  query_embeddings=world.folder("train"), gallery_embeddings=world.folder("gallery"),
                  output=world.root / "light", group_size=GROUP, hidden=32, fourier_features=8,
                  training=FitSettings(epochs=8, batch_size=32, learning_rate=3e-3))
    return LightTrainConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def trained(world):
    groups, _ = build_groups(pl.read_parquet(world.root / "train-candidates.parquet"),
                             Lookups(world.folder("train"), world.folder("gallery")), GROUP, world.truth("train"))
    result = fit_light_ranker(groups, _config(world))
    assert result.queries == 500 and result.short_groups == 0
    assert result.losses[-1] < result.losses[0]
    return result.model


def _test_groups(world):
    return build_groups(pl.read_parquet(world.root / "test-candidates.parquet"),
                        Lookups(world.folder("test"), world.folder("gallery")), GROUP, world.truth("test"))[0]


def _mean_log_error(model, groups) -> float:
    rewards = score_groups(model, groups)
    chosen = groups.distances.numpy()[np.arange(len(groups)), rewards.argmax(axis=1)]
    return float(np.mean(np.log1p(chosen)))


def test_trained_ranker_beats_its_untrained_self_on_held_out_queries(world, trained):
    groups = _test_groups(world)
    untrained = LightRanker(trained.config)
    assert _mean_log_error(trained, groups) < _mean_log_error(untrained, groups) - 0.3


def test_save_load_round_trip_gives_identical_scores(world, trained, tmp_path):
    save_light_ranker(trained, tmp_path / "model")
    assert is_light_ranker(tmp_path / "model")
    loaded = load_light_ranker(tmp_path / "model")
    groups = _test_groups(world)
    assert np.array_equal(score_groups(trained, groups), score_groups(loaded, groups))
    assert torch.equal(trained.fourier, loaded.fourier)


def test_padding_never_wins_and_groups_keep_their_candidates(world, trained):
    frame = pl.read_parquet(world.root / "test-candidates.parquet")
    short = frame.filter(~((pl.col("query_id") == frame["query_id"][0]) & (pl.col("rank") >= 3)))
    predictions = rank_light(short, trained, Lookups(world.folder("test"), world.folder("gallery")))
    assert predictions.height == 500 and predictions["score"].is_finite().all()
    first = short.filter(pl.col("query_id") == frame["query_id"][0])
    assert predictions.row(0, named=True)["lat"] in first["lat"].to_list()


def test_unknown_ids_are_clear_errors(world):
    frame = pl.read_parquet(world.root / "test-candidates.parquet")
    with pytest.raises(ValueError, match="no embedding for 500 query"):
        build_groups(frame, Lookups(world.folder("train")))
    with pytest.raises(ValueError, match="candidate gallery"):
        build_groups(frame, Lookups(world.folder("test"), world.folder("train")))
    with pytest.raises(ValueError, match="empty"):
        build_groups(frame.clear(), Lookups(world.folder("test")))


def test_cli_train_light_and_score_write_predictions_evaluate_reads(world, tmp_path):
    settings = {"candidates": str(world.root / "train-candidates.parquet"),
                "truth": str(world.root / "train-truth.parquet"), "query_embeddings": str(world.folder("train")),
                "gallery_embeddings": str(world.folder("gallery")), "output": str(tmp_path / "light"),
                "group_size": GROUP, "hidden": 16, "fourier_features": 4,
                "training": {"epochs": 1, "batch_size": 64}}
    (tmp_path / "light.yaml").write_text(yaml.safe_dump(settings))
    runner = CliRunner()
    result = runner.invoke(app, ["ranker", "train", "--light", "--config", str(tmp_path / "light.yaml")])
    assert result.exit_code == 0, result.output
    assert "effective batch size 64" in result.output
    out = tmp_path / "predictions.csv"
    result = runner.invoke(app, ["ranker", "score", "--candidates", str(world.root / "test-candidates.parquet"),
                                 "--adapter", str(tmp_path / "light"), "--out", str(out), "--query-embeddings",
                                 str(world.folder("test")), "--gallery-embeddings", str(world.folder("gallery"))])
    assert result.exit_code == 0, result.output
    figures = evaluate_files(out, world.root / "test-truth.parquet").metrics
    assert figures["n"] == 500 and figures["missing"] == 0
    predictions = pl.read_csv(out)
    candidates = conform_candidates(pl.read_parquet(world.root / "test-candidates.parquet"), "candidates")
    chosen = predictions.join(candidates, left_on=["image_id", "lat", "lon"], right_on=["query_id", "lat", "lon"])
    assert chosen["image_id"].n_unique() == 500
    result = runner.invoke(app, ["ranker", "score", "--candidates", str(world.root / "test-candidates.parquet"),
                                 "--adapter", str(tmp_path / "light"), "--out", str(out)])
    assert result.exit_code != 0 and "--query-embeddings" in result.output


def test_unknown_settings_are_refused(world):
    with pytest.raises(ValueError, match="unknown setting"):
        LightTrainConfig.from_dict({"candidates": "c", "truth": "t", "query_embeddings": "q", "output": "o",
                                    "colour": "blue"})


def test_distances_follow_the_truth(world):
    groups = _test_groups(world)
    part = world.splits["test"]
    expected = distance_km(groups.lat[:, 0], groups.lon[:, 0], world.lat[part], world.lon[part])
    assert np.allclose(groups.distances[:, 0].numpy(), expected, rtol=1e-5, atol=1e-3)



def test_place_texts_are_used_when_given_and_optional_when_scoring(world, tmp_path):
    from geoloc.embeddings import write_embeddings

    texts = [f"place {k}" for k in range(5)]
    write_embeddings(tmp_path / "texts", texts, np.random.default_rng(0).normal(size=(5, 12)), "text")
    frame = pl.read_parquet(world.root / "train-candidates.parquet").with_columns(
        text=pl.lit("place ") + (pl.col("rank") % 5).cast(pl.Utf8))
    lookups = Lookups(world.folder("train"), world.folder("gallery"), text_embeddings=tmp_path / "texts")
    groups, _ = build_groups(frame, lookups, GROUP, world.truth("train"))
    assert (groups.text_rows >= 0).all()
    model = fit_light_ranker(groups, _config(world, training=FitSettings(epochs=1, batch_size=64))).model
    assert model.config.text_dim == 12
    test = pl.read_parquet(world.root / "test-candidates.parquet")
    with_texts = rank_light(test.with_columns(text=pl.lit("place 1")), model,
                            Lookups(world.folder("test"), world.folder("gallery"), text_embeddings=tmp_path / "texts"))
    without = rank_light(test, model, Lookups(world.folder("test"), world.folder("gallery")))
    assert with_texts.height == without.height == 500
