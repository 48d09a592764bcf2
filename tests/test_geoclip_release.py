"""`geoloc geoclip train` end to end on real JPEGs: a release the `geoclip` package loads and predicts with as
`geoloc predict --model` does; raw features recorded and checked; bad rows refused with their reason."""

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from conftest import build_tiny_clip
from PIL import Image
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.embeddings import EmbeddingsError, read_embeddings
from geoloc.encode import embed_table
from geoloc.encode.loading import load_backbone
from geoloc.geoclip import training_rows
from geoloc.geoclip.release import read_release, sample_gallery

REVISION = "0123456789abcdef0123456789abcdef01234567"
PLACES = [("paris", 48.8584, 2.2945), ("sydney", -33.8568, 151.2153), ("rio", -22.9519, -43.2105),
          ("tokyo", 35.6586, 139.7454), ("cairo", 29.9792, 31.1342), ("quito", -0.2202, -78.5123),
          ("oslo", 59.9139, 10.7522), ("lima", -12.0464, -77.0428)]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def hub_cache(tmp_path):
    """A tiny CLIP at 224 px as the hub's cache holds a download: what the package's from_pretrained finds offline."""
    snapshot = build_tiny_clip(tmp_path / "hub" / "models--tiny--clip" / "snapshots" / REVISION, image_size=224)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(REVISION)
    return tmp_path / "hub", snapshot


@pytest.fixture
def photos(tmp_path):
    """Real JPEGs, one per place (twice: two photos a place), a corrupt file, a photo at null island."""
    root = tmp_path / "dataset"
    root.mkdir()
    rows = []
    for number, (name, lat, lon) in enumerate(PLACES * 2):
        pixels = (np.random.default_rng(number).random((72, 96, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{name}-{number}.jpg", quality=92)
        rows.append((f"{name}-{number}", f"{name}-{number}.jpg", lat, lon, "photos"))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    rows.append(("broken", "broken.jpg", 1.0, 1.0, "photos"))
    shutil.copy(root / "paris-0.jpg", root / "nowhere.jpg")
    rows.append(("nowhere", "nowhere.jpg", 0.0, 0.0, "photos"))
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    table = pl.DataFrame(rows, schema=["image_id", "uri", "lat", "lon", "source"], orient="row")
    table.write_parquet(catalog / "catalog.parquet")
    return root, catalog, table


def test_release_loads_in_the_package_and_predicts_as_geoloc_does(hub_cache, photos, tmp_path):
    from geoclip import GeoCLIP

    cache, snapshot = hub_cache
    root, catalog, table = photos
    backbone = load_backbone(str(snapshot), device="cpu").with_features("raw-geoclip-train")
    embeddings = tmp_path / "embeddings"
    embed_table(table, lambda source, uri: (root / uri).read_bytes(), backbone, embeddings, batch_size=8)
    meta, _, vectors = read_embeddings(embeddings)
    assert meta["feature_kind"] == "raw-geoclip-train"
    assert not np.allclose(np.linalg.norm(vectors, axis=1), 1.0)  # raw, not normalized

    release = tmp_path / "release"
    result = CliRunner().invoke(app, ["geoclip", "train", "--catalog", str(catalog), "--embeddings", str(embeddings),
                                      "--out", str(release), "--epochs", "2", "--batch-size", "4", "--queue-size",
                                      "8", "--lr", "1e-3", "--sigmas", "1,16,256,4096", "--val", str(catalog)])
    assert result.exit_code == 0, result.output
    assert "trained on 16 photos (2 refused)" in result.stdout
    refused = dict(pl.read_parquet(release / "refused.parquet").iter_rows())
    assert refused["nowhere"] == "null_island" and refused["broken"].startswith("embedding_failed: ")
    config = json.loads((release / "config.json").read_text())
    assert config["backbone"] == {"repo_id": "tiny/clip", "revision": REVISION}
    assert config["sigma"] == [1.0, 16.0, 256.0, 4096.0]
    assert len(read_release(release).gallery) == len(PLACES)  # the distinct training locations
    assert not (release / "checkpoint").exists() and (release / "location_features.safetensors").is_file()
    record = json.loads((release / "training.json").read_text())
    assert len(record["losses"]) == 2 and [row["epoch"] for row in record["validation"]] == [1, 2]
    assert 0 <= record["validation"][-1]["acc_2500km"] <= 1 and record["validation"][-1]["photos"] == 16

    package = GeoCLIP.from_pretrained(str(release), cache_dir=str(cache), local_files_only=True)
    queries = [root / "sydney-1.jpg", root / "oslo-14.jpg", root / "lima-7.jpg"]
    result = CliRunner().invoke(app, ["predict", *map(str, queries), "--model", str(release), "--top-k", "3",
                                      "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(answers) == len(queries)
    for query, answer in zip(queries, answers):
        with torch.inference_mode():
            coordinates, probabilities = package.predict(str(query), top_k=3)
        ours = np.array([[c["lat"], c["lon"]] for c in answer["candidates"]])
        np.testing.assert_allclose(ours, coordinates.numpy(), atol=1e-5)
        np.testing.assert_allclose([c["prob"] for c in answer["candidates"]], probabilities.numpy(), atol=1e-5)

    candidates = tmp_path / "geoclip.parquet"
    result = CliRunner().invoke(app, ["candidates", "geoclip", *map(str, queries), "--model", str(release), "--top-k",
                                      "3", "--out", str(candidates), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    best = pl.read_parquet(candidates).filter(pl.col("rank") == 0).sort("query_id")
    expected = sorted((query.name, answer["lat"], answer["lon"]) for query, answer in zip(queries, answers))
    assert best.select("query_id", "lat", "lon").rows() == expected
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "embeddings")])
    assert result.exit_code == 2 and "not a GeoCLIP release" in result.output


def test_normalized_or_foreign_embeddings_are_refused_with_what_to_do(tiny_clip, photos, tmp_path):
    root, catalog, table = photos
    normalized = tmp_path / "normalized"
    embed_table(table.head(3), lambda source, uri: (root / uri).read_bytes(), load_backbone(str(tiny_clip)),
                normalized)
    with pytest.raises(EmbeddingsError, match="holds normalized features .*--features raw-geoclip-train"):
        training_rows(catalog, normalized)
    result = CliRunner().invoke(app, ["index", "build", "--embeddings", str(normalized), "--catalog", str(catalog),
                                      "--out", str(tmp_path / "index")])
    assert result.exit_code == 0, result.output
    raw = tmp_path / "raw"
    embed_table(table.head(3), lambda source, uri: (root / uri).read_bytes(),
                load_backbone(str(tiny_clip)).with_features("raw"), raw)
    result = CliRunner().invoke(app, ["index", "build", "--embeddings", str(raw), "--catalog", str(catalog),
                                      "--out", str(tmp_path / "index2")])
    assert result.exit_code == 2 and "holds raw features" in result.output


def test_the_gallery_serves_sparse_regions_before_dense_ones():
    rng = np.random.default_rng(0)
    dense = np.column_stack([48.85 + rng.normal(0, 0.01, 5000), 2.35 + rng.normal(0, 0.01, 5000)])
    sparse = np.column_stack([rng.uniform(-60, 60, 50), rng.uniform(-180, 180, 50)])
    points = np.vstack([dense, sparse])
    gallery = sample_gallery(points[:, 0], points[:, 1], 200)
    assert len(gallery) == 200 and len(np.unique(gallery, axis=0)) == 200
    kept = {tuple(row) for row in gallery}
    assert all(tuple(row) in kept for row in sparse)  # every sparse location kept, the dense city fills the rest
    np.testing.assert_array_equal(gallery, sample_gallery(points[:, 0], points[:, 1], 200))


def test_augmented_views_are_embedded_side_by_side_and_train(hub_cache, photos, tmp_path):
    _, snapshot = hub_cache
    root, catalog, table = photos
    backbone = load_backbone(str(snapshot), device="cpu").with_features("raw-geoclip-train", views=2)
    embeddings = tmp_path / "views"
    torch.manual_seed(0)
    embed_table(table.head(4), lambda source, uri: (root / uri).read_bytes(), backbone, embeddings)
    meta, _, vectors = read_embeddings(embeddings)
    assert (meta["views"], meta["dim"], vectors.shape) == (2, 1536, (4, 1536))
    assert not np.allclose(vectors[:, :768], vectors[:, 768:])  # two random augmentations of each photo
    rows = training_rows(catalog, embeddings)
    assert rows.features.shape == (4, 2, 768)
    np.testing.assert_array_equal(rows.features[:, 1], vectors[:, 768:])
    with pytest.raises(ValueError, match="raw-geoclip-train only"):
        load_backbone(str(snapshot), device="cpu").with_features("raw", views=2)


def test_fine_tuning_starts_from_the_published_weights_and_refuses_other_sigmas(tiny_clip, photos, tmp_path):
    from safetensors.torch import load_file

    from geoloc.geoclip.model import published_state

    root, catalog, table = photos
    raw = tmp_path / "raw"
    embed_table(table.head(8), lambda source, uri: (root / uri).read_bytes(),
                load_backbone(str(tiny_clip)).with_features("raw"), raw)
    common = ["geoclip", "train", "--catalog", str(catalog), "--embeddings", str(raw), "--batch-size", "4",
              "--queue-size", "8", "--epochs", "1"]
    result = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "tuned"), "--init", "published"])
    assert result.exit_code == 0, result.output
    tuned, published = load_file(tmp_path / "tuned" / "model.safetensors"), published_state()
    torch.testing.assert_close(tuned["location_encoder.LocEnc2.capsule.0.b"],
                               published["location_encoder.LocEnc2.capsule.0.b"], rtol=0, atol=0)  # fixed RFF
    moved = (tuned["image_encoder.mlp.0.weight"] - published["image_encoder.mlp.0.weight"]).abs().max()
    assert 0 < moved < 1e-3  # one epoch at 3e-5 from the published weights, not from scratch
    result = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "other"), "--init", str(tmp_path / "tuned"),
                                      "--sigmas", "1,16,256,4096"])
    assert result.exit_code == 2 and "was trained with sigmas" in result.output


def test_a_gallery_file_in_either_layout_and_a_bad_one_refused(tmp_path):
    from geoloc.geoclip.release import ReleaseError, read_gallery_file

    pl.DataFrame({"LAT": [48.85, -33.86], "LON": [2.35, 151.21]}).write_csv(tmp_path / "gallery.csv")
    pl.DataFrame({"lat": [48.85], "lon": [2.35]}).write_parquet(tmp_path / "gallery.parquet")
    np.testing.assert_array_equal(read_gallery_file(tmp_path / "gallery.csv"), [[48.85, 2.35], [-33.86, 151.21]])
    np.testing.assert_array_equal(read_gallery_file(tmp_path / "gallery.parquet"), [[48.85, 2.35]])
    pl.DataFrame({"lat": [48.85, 95.0], "lon": [2.35, 0.0]}).write_csv(tmp_path / "bad.csv")
    with pytest.raises(ReleaseError, match="every one a valid lat, lon"):
        read_gallery_file(tmp_path / "bad.csv")
