"""`geoloc candidates plonk`: modes of each photo's samples scored by their exact log-likelihood, the
confidence region's estimator against a density whose regions are known, embeddings of another kind refused."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from plonk_models import write_tiny_plonk
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.embeddings import write_embeddings
from geoloc.geo import great_circle_km
from geoloc.plonk.density import _region
from geoloc.plonk.model import load_plonk
from geoloc.plonk.sampling import log_likelihood, to_points

COND_DIM = 8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_plonk(tmp_path_factory.mktemp("checkpoint"), COND_DIM, 11)


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embeddings")
    vectors = np.random.default_rng(0).normal(size=(3, COND_DIM)).astype(np.float32)
    write_embeddings(folder, ["a.jpg", "b.jpg", "c.jpg"], vectors, backbone="plonk-dinov2:/models/dinov2",
                     feature_kind="raw")
    return folder, vectors


def run(*arguments: str):
    return CliRunner().invoke(app, ["candidates", "plonk", *arguments, "--device", "cpu"])


def test_modes_are_scored_by_their_exact_log_likelihood(checkpoint, embeddings, tmp_path):
    folder, vectors = embeddings
    out = tmp_path / "plonk.parquet"
    result = run("--model", str(checkpoint), "--embeddings", str(folder), "--out", str(out), "--samples", "24",
                 "--steps", "8", "--modes", "3", "--separation-km", "1500")
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out)
    assert set(table["source"]) == {"plonk"} and table["query_id"].unique().sort().to_list() == ["a.jpg", "b.jpg",
                                                                                                "c.jpg"]
    for _, rows in table.group_by("query_id"):
        assert rows["rank"].to_list() == list(range(len(rows)))
        assert rows["score"].is_sorted(descending=True)
        lat, lon = rows["lat"].to_numpy(), rows["lon"].to_numpy()
        apart = great_circle_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
        assert (apart[~np.eye(len(rows), dtype=bool)] > 1500).all()
        assert rows["radius_km"].n_unique() == 1 and rows["area_km2"][0] > 0
    model = load_plonk(str(checkpoint))
    row = {"a.jpg": 0, "b.jpg": 1, "c.jpg": 2}
    conditions = torch.from_numpy(vectors[[row[q] for q in table["query_id"]]])
    again = log_likelihood(model.network, model.settings.schedule, conditions,
                           to_points(torch.from_numpy(table.select("lat", "lon").to_numpy())))
    np.testing.assert_allclose(again.numpy(), table["score"].to_numpy(), atol=1e-3)


@pytest.mark.parametrize(("backbone", "kind"), [("openai/clip-vit-large-patch14", "raw"),
                                                ("plonk-dinov2", "normalized")])
def test_embeddings_of_another_backbone_or_kind_are_refused(checkpoint, tmp_path, backbone, kind):
    folder = tmp_path / "other"
    write_embeddings(folder, ["a.jpg"], np.ones((1, COND_DIM), np.float32), backbone=backbone, feature_kind=kind)
    result = run("--model", str(checkpoint), "--embeddings", str(folder), "--out", str(tmp_path / "x.parquet"))
    assert result.exit_code == 2
    assert "conditions on raw 'plonk-dinov2'" in result.output and not (tmp_path / "x.parquet").exists()


def test_the_region_of_a_von_mises_fisher_density_is_its_cap():
    """Samples of a vMF density with their exact log densities: the highest-density region of mass m is the cap
    cos(angle) >= c around the mean, of area 2 pi (1 - c), and its radius the cap's angle."""
    kappa, mass, count = 20.0, 0.9, 200_000
    rng = np.random.default_rng(5)
    u = rng.uniform(size=count)
    w = 1 + np.log(u + (1 - u) * math.exp(-2 * kappa)) / kappa
    phi = rng.uniform(0, 2 * math.pi, size=count)
    radial = np.sqrt(1 - w**2)
    points = torch.from_numpy(np.stack([radial * np.cos(phi), radial * np.sin(phi), w], axis=-1))[None]
    log_density = torch.from_numpy(math.log(kappa / (2 * math.pi * (1 - math.exp(-2 * kappa)))) + kappa * (w - 1))
    area, radius, _ = _region(points, log_density[None], torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64), mass)
    cap = 1 + math.log(1 - mass * (1 - math.exp(-2 * kappa))) / kappa
    assert area.item() == pytest.approx(2 * math.pi * (1 - cap), rel=0.02)
    assert radius.item() == pytest.approx(math.acos(cap), rel=0.01)


def test_an_interrupted_run_redoes_only_the_parts_not_finished(checkpoint, tmp_path, monkeypatch):
    import geoloc.candidates.plonk as plonk_module
    from geoloc.plonk.density import DensitySettings

    folder = tmp_path / "emb"
    vectors = np.random.default_rng(1).normal(size=(3, COND_DIM)).astype(np.float32)
    write_embeddings(folder, ["a.jpg", "b.jpg", "c.jpg"], vectors, backbone="plonk-dinov2", chunk_rows=2,
                     feature_kind="raw")
    model, settings, work = load_plonk(str(checkpoint)), DensitySettings(samples=8, steps=4, modes=2), tmp_path / "w"
    real, calls = plonk_module.photo_densities, []

    def dies_at_the_second_part(*arguments):
        calls.append(len(arguments[1]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*arguments)

    monkeypatch.setattr(plonk_module, "photo_densities", dies_at_the_second_part)
    with pytest.raises(KeyboardInterrupt):
        plonk_module.plonk_candidates(model, folder, settings, work, {"run": 1})
    calls.clear()
    table = plonk_module.plonk_candidates(model, folder, settings, work, {"run": 1})
    assert calls == [1], "only the second part (one photo) was sampled again"
    assert sorted(table["query_id"].unique()) == ["a.jpg", "b.jpg", "c.jpg"]
    with pytest.raises(ValueError, match="other settings"):
        plonk_module.plonk_candidates(model, folder, settings, work, {"run": 2})
