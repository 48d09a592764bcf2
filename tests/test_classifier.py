"""The hierarchical geocell classifier learns on a small synthetic world, saves and loads exactly, runs by CLI."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from small_world import make_world
from typer.testing import CliRunner

from geoloc.candidates import conform_candidates
from geoloc.classifier import (
    ClassifierSettings,
    HierarchicalClassifier,
    classifier_candidates,
    load_classifier,
    predict_cells,
    read_cell_table,
    save_classifier,
    train_classifier,
)
from geoloc.classifier.model import haversine_smoothing, top_down_scores
from geoloc.cli import app
from geoloc.fitting import FitSettings
from geoloc.geo import distance_km

FAST = ClassifierSettings(hidden=128, fit=FitSettings(epochs=10, batch_size=128, learning_rate=3e-3))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def trained(world):
    out = world.root / "classifier"
    rows = train_classifier(world.root / "cells", world.folder("gallery"), world.root / "catalog", out, FAST)
    assert rows == 3000
    return out


def _median_error_km(world, model_dir) -> float:
    part = world.splits["test"]
    candidates = classifier_candidates(world.ids[part].tolist(), world.vectors[part], model_dir, top_k=1)
    return float(np.median(distance_km(candidates["lat"], candidates["lon"], world.lat[part], world.lon[part])))


def test_trained_classifier_beats_its_untrained_self_on_held_out_queries(world, trained, tmp_path):
    model, table, memory = load_classifier(trained)
    torch.manual_seed(0)
    save_classifier(tmp_path / "untrained", HierarchicalClassifier(model.config), table, memory)
    trained_km, untrained_km = _median_error_km(world, trained), _median_error_km(world, tmp_path / "untrained")
    assert trained_km < 0.5 * untrained_km, (trained_km, untrained_km)


def test_candidates_sit_at_centroids_or_at_training_photos_of_the_cell(world, trained):
    model, table, memory = load_classifier(trained)
    part = world.splits["test"]
    at_centroids = classifier_candidates(world.ids[part].tolist(), world.vectors[part], trained, 2, nearest=0)
    cells, _, lat, lon = predict_cells(model, table, memory, world.vectors[part], top_k=2, nearest=1)
    centroids = table.centroids[0][cells.ravel()]
    assert np.allclose(at_centroids["lat"], centroids[:, 0]) and np.allclose(at_centroids["lon"], centroids[:, 1])
    # nearest=1: each candidate is one training photo of its own cell (or the centroid when none was searched).
    photo = distance_km(lat.ravel()[:, None], lon.ravel()[:, None], memory.coordinates[None, :, 0],
                        memory.coordinates[None, :, 1])
    closest = photo.argmin(axis=1)
    at_photo = photo.min(axis=1) < 1e-3
    assert at_photo.mean() > 0.9
    assert (memory.cells[closest[at_photo]] == cells.ravel()[at_photo]).all()


def test_save_load_round_trip_gives_identical_scores(world, trained, tmp_path):
    model, table, memory = load_classifier(trained)
    save_classifier(tmp_path / "copy", model, table, memory)
    part = world.splits["test"]
    first, second = (classifier_candidates(world.ids[part].tolist(), world.vectors[part], folder, top_k=3)
                     for folder in (trained, tmp_path / "copy"))
    assert first.equals(second)
    config = json.loads((trained / "classifier.json").read_text())
    assert config["cells_per_level"] == [len(c) for c in read_cell_table(world.root / "cells").centroids]
    assert not list(trained.glob("*.pt")) and not list(trained.glob("*.pkl"))


def test_smoothing_keeps_most_mass_on_the_true_cell_and_decays_with_distance():
    centroids = np.array([[0.0, 0.0], [0.0, 0.5], [0.0, 2.0], [0.0, 0.0]])
    smoothing = haversine_smoothing(centroids, tau_km=50.0, k=3)
    assert torch.allclose(smoothing.mass.sum(dim=1), torch.ones(4))
    assert smoothing.neighbours[:, 0].tolist() == [0, 1, 2, 3]
    assert (smoothing.mass[:, 0] >= smoothing.mass[:, 1]).all()
    assert smoothing.mass[1, 0] > 0.5


def test_top_down_scores_add_the_ancestors_log_probabilities():
    logits = [torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[3.0, 0.0]])]
    ancestors = torch.tensor([[0, 0], [1, 1], [2, 1]])
    scores = top_down_scores(logits, ancestors)
    fine, coarse = torch.log_softmax(logits[0], -1), torch.log_softmax(logits[1], -1)
    assert torch.allclose(scores, fine + coarse[:, [0, 1, 1]])
    assert scores.argmax().item() == 0  # the coarse head outvotes the finest one


def test_cli_train_and_predict_write_candidates(world, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["classifier", "train", "--cells", str(world.root / "cells"), "--embeddings",
                                 str(world.folder("gallery")), "--catalog", str(world.root / "catalog"), "--out",
                                 str(tmp_path / "model"), "--epochs", "1", "--hidden", "32"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["classifier", "predict", "--model", str(tmp_path / "model"), "--embeddings",
                                 str(world.folder("test")), "--out", str(tmp_path / "candidates.parquet"),
                                 "--top-k", "3"])
    assert result.exit_code == 0, result.output
    candidates = conform_candidates(pl.read_parquet(tmp_path / "candidates.parquet"), "candidates")
    assert candidates.height == 3 * 600 and set(candidates["source"]) == {"classifier"}
    assert candidates["rank"].to_list()[:3] == [0, 1, 2]
    assert (candidates["score"].diff().fill_null(-1.0).filter(candidates["rank"] > 0) <= 1e-9).all()


def test_cli_reports_bad_input_cleanly(world, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["classifier", "train", "--cells", str(tmp_path / "nowhere"), "--embeddings",
                                 str(world.folder("gallery")), "--catalog", str(world.root / "catalog"), "--out",
                                 str(tmp_path / "model")])
    assert result.exit_code == 2 and "geoloc cells build" in result.output
    result = runner.invoke(app, ["classifier", "train", "--cells", str(world.root / "cells"), "--embeddings",
                                 str(world.folder("test")), "--catalog", str(world.root / "catalog"), "--out",
                                 str(tmp_path / "model")])
    assert result.exit_code == 2 and "not in" in result.output
    result = runner.invoke(app, ["classifier", "predict", "--model", str(tmp_path / "nothing"), "--embeddings",
                                 str(world.folder("test")), "--out", str(tmp_path / "c.parquet")])
    assert result.exit_code == 2 and "not a classifier folder" in result.output


def test_pigeon_smoothing_targets_follow_the_distance_beyond_the_nearest_centroid():
    from geoloc.classifier.model import photo_smoothing_targets

    centroids = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
    photos = np.array([[0.0, 0.2], [9.0, 9.5]])
    targets = photo_smoothing_targets(torch.tensor(photos), torch.tensor(centroids), 75.0).numpy()
    km = distance_km(photos[:, None, 0], photos[:, None, 1], centroids[None, :, 0], centroids[None, :, 1])
    assert np.allclose(targets, np.exp(-(km - km.min(axis=1, keepdims=True)) / 75.0), atol=1e-3)
    assert targets.max(axis=1).tolist() == [1.0, 1.0]  # the nearest centroid gets 1: not normalized, as in PIGEON


def test_classifier_on_semantic_cells_with_pigeon_smoothing_names_the_place(world, tmp_path):
    import shapely

    from geoloc.cells.semantic_build import SemanticOptions, build_semantic_cells
    from geoloc.places.boundaries import AdminAreas

    boxes = [(west, south) for west in range(-180, 180, 30) for south in range(-90, 90, 30)]
    names = pl.DataFrame({"country": [f"C{w // 90}" for w, _ in boxes], "admin1": [f"R{w}" for w, _ in boxes],
                          "name": [f"A{w}_{s}" for w, s in boxes]})
    grid = AdminAreas(names, np.asarray([shapely.box(w, s, w + 30, s + 30) for w, s in boxes], dtype=object))
    build_semantic_cells(world.root / "catalog", tmp_path / "cells", SemanticOptions(min_photos=20, max_photos=400),
                         areas=grid)
    settings = ClassifierSettings(hidden=128, label_smoothing_km=75.0, fit=FAST.fit)
    rows = train_classifier(tmp_path / "cells", world.folder("gallery"), world.root / "catalog", tmp_path / "model",
                            settings)
    assert rows == 3000
    model, table, memory = load_classifier(tmp_path / "model")
    assert model.config.photo_smoothing and model.config.tau_km == [75.0]
    torch.manual_seed(0)
    save_classifier(tmp_path / "untrained", HierarchicalClassifier(model.config), table, memory)
    assert _median_error_km(world, tmp_path / "model") < 0.5 * _median_error_km(world, tmp_path / "untrained")
    part = world.splits["test"]
    candidates = classifier_candidates(world.ids[part].tolist(), world.vectors[part], tmp_path / "model", top_k=1)
    cells = pl.read_parquet(tmp_path / "cells" / "cells.parquet")
    places = {f"{a}, {r}, {c}" for a, r, c in cells.select("admin2", "admin1", "country").rows()}
    assert candidates["text"].null_count() == 0 and set(candidates["text"]) <= places
