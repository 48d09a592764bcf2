"""PLONK in geoloc against the authors' package (`diff-plonk`, installed beside the project without its
dependencies): a tiny network with random weights, saved as the package saves it, must sample and
measure likelihoods as `PlonkPipeline` does, for each sampler, from the same embeddings and noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoloc.plonk.model import PlonkSettings, PlonkUnavailable, load_plonk, save_plonk
from geoloc.plonk.sampling import SAMPLERS, log_likelihood, sample_points, to_degrees, to_points

pipe = pytest.importorskip("plonk.pipe", reason="the parity tests need diff-plonk (scripts/setup.sh --dev)")

COND_DIM = 16
PHOTOS = 6
STEPS = 40


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A random-weight network saved by the package itself (PyTorchModelHubMixin.save_pretrained)."""
    from plonk.models.pretrained_models import Plonk

    torch.manual_seed(7)
    network = Plonk(input_dim=3, dim=32, depth=2, expansion=2, cond_dim=COND_DIM)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0.0, 0.05)
    folder = tmp_path_factory.mktemp("plonk")
    network.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(PHOTOS, COND_DIM, generator=generator), torch.randn(PHOTOS, 3, generator=generator)


def authors_pipeline(folder: str, sampler: str, monkeypatch) -> object:
    """PlonkPipeline on the folder: its sampler table told the folder's sampler, its image encoder replaced
    by one that passes the given embeddings through (the pipeline keys both by hub id)."""
    samplers = {"riemannian_flow": pipe.riemannian_flow_sampler, "flow": pipe.flow_sampler,
                "ddim": pipe.ddim_sampler}
    monkeypatch.setitem(pipe.MODELS, folder, {"emb_name": "dinov2", "sampler": samplers[sampler]})
    monkeypatch.setattr(pipe, "load_prepocessing", lambda model_name: lambda batch: {
        **batch, "emb": torch.stack(batch["img"])})
    return pipe.PlonkPipeline(folder, device="cpu")


@pytest.mark.parametrize("cfg", [0.0, 2.0])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samples_equal_the_pipelines(checkpoint, inputs, sampler, cfg, monkeypatch):
    embeddings, noise = inputs
    authors = authors_pipeline(checkpoint, sampler, monkeypatch)
    theirs = authors.sampler(authors.model, {"y": noise.clone(), "emb": embeddings.clone()}, conditioning_keys="emb",
                             scheduler=authors.scheduler, num_steps=STEPS, cfg_rate=cfg)
    model = load_plonk(checkpoint, settings=PlonkSettings(sampler, "plonk-dinov2"))
    ours = sample_points(model.network, sampler, model.settings.schedule, embeddings, noise, STEPS, cfg)
    assert theirs.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    if sampler == "riemannian_flow":
        degrees = authors(list(embeddings), x_N=noise.clone(), num_steps=STEPS, cfg=cfg)
        torch.testing.assert_close(to_points(to_degrees(ours)).float(),
                                   to_points(torch.from_numpy(degrees).double()).float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("cfg", [0.0, 1.5])
def test_log_likelihoods_equal_the_pipelines(checkpoint, inputs, cfg, monkeypatch):
    embeddings, _ = inputs
    authors = authors_pipeline(checkpoint, "riemannian_flow", monkeypatch)
    degrees = np.array([[48.85, 2.35], [-33.9, 151.2], [40.7, -74.0], [0.0, 179.9], [-89.0, 10.0], [64.1, -21.9]])
    theirs = authors.compute_likelihood(emb=embeddings.clone(), coordinates=degrees, cfg=cfg, normalize_logp=False)
    model = load_plonk(checkpoint, settings=PlonkSettings("riemannian_flow", "plonk-dinov2"))
    ours = log_likelihood(model.network, model.settings.schedule, embeddings, to_points(torch.from_numpy(degrees)),
                          cfg=cfg)
    assert theirs.std() > 1e-3
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=0)


def test_a_folder_we_write_loads_in_the_package_and_back(checkpoint, tmp_path):
    from plonk.models.pretrained_models import Plonk

    model = load_plonk(checkpoint, settings=PlonkSettings("flow", "plonk-streetclip"))
    save_plonk(model, tmp_path)
    theirs = Plonk.from_pretrained(str(tmp_path))
    again = load_plonk(str(tmp_path))
    assert again.settings == model.settings
    for name, tensor in theirs.state_dict().items():
        torch.testing.assert_close(tensor, model.network.state_dict()[name], atol=0, rtol=0)


def test_a_folder_without_settings_names_what_is_missing(checkpoint):
    with pytest.raises(PlonkUnavailable, match="--sampler"):
        load_plonk(checkpoint)


def test_published_names_know_their_sampler(checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "PLONK_OSV_5M_diffusion"
    shutil.copytree(checkpoint, folder)
    assert load_plonk(str(folder)).settings == PlonkSettings("ddim", "plonk-streetclip", feature_kind="raw")


@pytest.mark.parametrize("cond_drop", [0.0, 0.5])
def test_the_training_loss_equals_the_packages(checkpoint, inputs, cond_drop):
    """From the same random state: the same times, starting points and dropped embeddings, the same loss."""
    from plonk.models.losses import RiemannianFlowMatchingLoss
    from plonk.models.preconditioning import DDPMPrecond
    from plonk.models.pretrained_models import Plonk
    from plonk.models.schedulers import SigmoidScheduler

    from geoloc.plonk.training import flow_matching_loss

    embeddings, noise = inputs
    targets = torch.nn.functional.normalize(noise, dim=-1)
    theirs_network = Plonk.from_pretrained(checkpoint)
    loss = RiemannianFlowMatchingLoss(SigmoidScheduler(-7, 3, 1.0), cond_drop_rate=cond_drop, conditioning_key="emb")
    torch.manual_seed(5)
    theirs = loss(DDPMPrecond(), theirs_network, {"x_0": targets.clone(), "emb": embeddings.clone()})
    model = load_plonk(checkpoint, settings=PlonkSettings("riemannian_flow", "plonk-dinov2"))
    torch.manual_seed(5)
    ours = flow_matching_loss(model.network, model.settings.schedule, targets, embeddings, cond_drop)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_a_trained_folder_loads_in_the_package_and_samples_the_same(tmp_path, monkeypatch):
    """`geoloc plonk train` on a tiny catalog: the loss falls, and PlonkPipeline samples the folder as geoloc does."""
    import polars as pl
    from typer.testing import CliRunner

    from geoloc.cli import app
    from geoloc.embeddings import write_embeddings

    rng = np.random.default_rng(0)
    ids = [f"p{i}.jpg" for i in range(256)]
    lat, lon = rng.uniform(-60, 60, 256), rng.uniform(-180, 180, 256)
    (tmp_path / "catalog").mkdir()
    pl.DataFrame({"image_id": ids, "uri": ids, "lat": lat, "lon": lon, "source": "test"}).write_parquet(
        tmp_path / "catalog" / "catalog.parquet")
    vectors = np.stack([np.sin(np.radians(lat)), np.cos(np.radians(lon)), np.sin(np.radians(lon)),
                        rng.normal(size=256)], axis=1).astype(np.float32)
    write_embeddings(tmp_path / "emb", ids, vectors, backbone="toy")
    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["plonk", "train", "--catalog", str(tmp_path / "catalog"), "--embeddings",
                                      str(tmp_path / "emb"), "--out", str(out), "--epochs", "6", "--batch-size", "64",
                                      "--dim", "16", "--depth", "1"])
    assert result.exit_code == 0, result.output
    losses = [float(line.split()[-1]) for line in result.output.splitlines() if "mean loss" in line and "epoch" in line]
    assert len(losses) == 6 and losses[-1] < losses[0]
    model = load_plonk(str(out))
    assert model.settings == PlonkSettings("riemannian_flow", "toy", feature_kind="normalized") and model.cond_dim == 4
    authors = authors_pipeline(str(out), "riemannian_flow", monkeypatch)
    embeddings, noise = torch.from_numpy(vectors[:4]), torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    degrees = authors(list(embeddings), x_N=noise.clone(), num_steps=STEPS)
    ours = sample_points(model.network, "riemannian_flow", model.settings.schedule, embeddings, noise, STEPS)
    theirs = to_points(torch.from_numpy(degrees).double()).float()
    torch.testing.assert_close(to_points(to_degrees(ours)).float(), theirs, atol=1e-4, rtol=0)
