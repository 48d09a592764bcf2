"""G3's geo-aligned backbone (`--backbone g3:PATH`) and reverse neighbours, on a tiny random-weight G3.

The G3 checkpoint is made as G3 makes it (conftest.build_tiny_g3). The expected vectors
come from an independent computation here: PIL preprocessing and the CLIP vision
transformer written out in torch ops, in float64, from the state dict.
"""

import json

import numpy as np
import polars as pl
import pytest
import torch
from conftest import build_tiny_g3
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.embeddings import read_embeddings
from geoloc.encode.loading import load_backbone

PROJECTION = 32
HEADS, LAYERS, PATCH, SIDE = 2, 2, 16, 64  # build_tiny_clip's vision tower
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PHOTOS = {"wide": (100, 80), "tall": (80, 96), "square": (64, 64), "rotated": (80, 96)}


@pytest.fixture(scope="module")
def g3(tmp_path_factory):
    """(CLIP folder, g3.pth, its state dict)."""
    clip_dir, checkpoint = build_tiny_g3(tmp_path_factory.mktemp("g3"), PROJECTION)
    return clip_dir, checkpoint, torch.load(checkpoint, weights_only=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real JPEGs of several shapes (one with an EXIF rotation G3 ignores) and their catalog."""
    root = tmp_path_factory.mktemp("photos")
    rows = []
    for number, (name, size) in enumerate(PHOTOS.items()):
        pixels = (np.random.default_rng(number).random((size[1], size[0], 3)) * 255).astype(np.uint8)
        exif = Image.Exif()
        if name == "rotated":
            exif[0x0112] = 6
        Image.fromarray(pixels).save(root / f"{name}.jpg", quality=95, exif=exif)
        rows.append((f"id-{name}", f"{name}.jpg", 10.0 * number, -20.0 * number, "photos"))
    catalog = pl.DataFrame(rows, schema=["image_id", "uri", "lat", "lon", "source"], orient="row")
    (root / "catalog").mkdir()
    catalog.write_parquet(root / "catalog" / "catalog.parquet")
    (root / "catalog" / "sources.json").write_text(json.dumps({"photos": {"root": str(root)}}))
    return root, catalog


def reference_pixels(path) -> torch.Tensor:
    """CLIP's preprocessing with PIL: RGB only (no EXIF rotation), bicubic shortest edge, centre crop."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    scale = SIDE / min(width, height)
    size = (SIDE, int(height * scale)) if width <= height else (int(width * scale), SIDE)
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - SIDE) // 2, (size[1] - SIDE) // 2
    array = np.asarray(image.crop((left, top, left + SIDE, top + SIDE)), dtype=np.float64) / 255.0
    array = (array - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def reference_g3(state: dict, pixels: torch.Tensor) -> np.ndarray:
    """G3's index vector, from the state dict's tensors alone (float64)."""
    w = {key: value.double() for key, value in state.items()}
    f = nn.functional

    def norm(x, name):
        return f.layer_norm(x, x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-5)

    def linear(x, name):
        return f.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))

    v = "vision_model"
    x = f.conv2d(pixels.double(), w[f"{v}.embeddings.patch_embedding.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([w[f"{v}.embeddings.class_embedding"].expand(len(x), 1, -1), x], dim=1)
    x = norm(x + w[f"{v}.embeddings.position_embedding.weight"], f"{v}.pre_layrnorm")
    for layer in range(LAYERS):
        name = f"{v}.encoder.layers.{layer}"
        h = norm(x, f"{name}.layer_norm1")
        q, k, values = (linear(h, f"{name}.self_attn.{p}_proj").unflatten(-1, (HEADS, -1)).transpose(1, 2)
                        for p in "qkv")
        attention = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        x = x + linear((attention @ values).transpose(1, 2).flatten(2), f"{name}.self_attn.out_proj")
        h = linear(norm(x, f"{name}.layer_norm2"), f"{name}.mlp.fc1")
        x = x + linear(h * torch.sigmoid(1.702 * h), f"{name}.mlp.fc2")
    p = linear(norm(x[:, 0], f"{v}.post_layernorm"), "vision_projection")
    heads = [linear(torch.relu(linear(p, f"vision_projection_else_{n}.0")), f"vision_projection_else_{n}.2")
             for n in (1, 2)]
    return torch.cat([f.normalize(t, dim=-1) for t in (p, *heads)], dim=-1).numpy()


def test_embed_gives_g3s_vectors_and_retrieve_uses_the_gallerys_g3(g3, photos, tmp_path):
    clip_dir, checkpoint, state = g3
    root, catalog = photos
    runner = CliRunner()
    embeddings, index_dir = tmp_path / "embeddings", tmp_path / "index"
    result = runner.invoke(app, ["embed", "--catalog", str(root / "catalog"), "--out", str(embeddings),
                                 "--backbone", f"g3:{checkpoint}", "--clip", str(clip_dir), "--workers", "0",
                                 "--device", "cpu", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    meta, ids, vectors = read_embeddings(embeddings)
    spec = f"g3:{checkpoint.resolve()}?clip={clip_dir.resolve()}"
    assert meta["backbone"] == spec and meta["dim"] == 3 * PROJECTION
    pixels = torch.stack([reference_pixels(root / uri) for uri in catalog["uri"]])
    expected = reference_g3(state, pixels)
    assert ids.to_list() == catalog["image_id"].to_list()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), np.sqrt(3), rtol=1e-6)
    thirds = np.linalg.norm(vectors.reshape(len(vectors), 3, PROJECTION), axis=2)
    np.testing.assert_allclose(thirds, 1.0, rtol=1e-6)
    assert np.abs(thirds.sum(axis=1) - np.linalg.norm(vectors, axis=1)).min() > 1  # never renormalized as a whole
    # The processor is PIL's, as G3 ran it: the same pixels as the PIL pipeline written above.
    backbone = load_backbone(spec, device="cpu")
    images = [Image.open(root / uri) for uri in catalog["uri"]]
    np.testing.assert_allclose(backbone.pixel_values(images).double(), pixels, atol=1e-6)

    result = runner.invoke(app, ["index", "build", "--embeddings", str(embeddings), "--catalog",
                                 str(root / "catalog"), "--out", str(index_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads((index_dir / "index.json").read_text())["backbone"] == spec

    queries = tmp_path / "queries"
    queries.mkdir()
    for name in ("wide", "rotated"):
        (queries / f"{name}.jpg").write_bytes((root / f"{name}.jpg").read_bytes())
    out = tmp_path / "candidates.parquet"
    result = runner.invoke(app, ["retrieve", str(queries), "--index", str(index_dir), "--k", "3", "--reverse", "2",
                                 "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    found = pl.read_parquet(out).sort("query_id", "source", "rank")
    assert found.columns == ["query_id", "source", "rank", "lat", "lon", "score", "text", "ref_uri"]
    query_vectors = expected[[catalog["image_id"].to_list().index(f"id-{n}") for n in ("rotated", "wide")]]
    similarity = query_vectors @ expected.T
    for row, query in enumerate(["rotated.jpg", "wide.jpg"]):
        for source, scores, k in (("retrieval", similarity[row], 3), ("reverse", -similarity[row], 2)):
            rows = found.filter((pl.col("query_id") == query) & (pl.col("source") == source))
            order = np.argsort(-scores, kind="stable")[:k]
            assert rows["ref_uri"].to_list() == catalog["uri"].gather(order).to_list()
            assert rows["rank"].to_list() == list(range(k))
            np.testing.assert_allclose(rows["score"].to_numpy(), scores[order], atol=1e-5)
            np.testing.assert_allclose(rows["lat"].to_numpy(), catalog["lat"].gather(order).to_numpy())
    assert found.filter(pl.col("source") == "retrieval")["score"].max() == pytest.approx(3.0, abs=1e-5)

    # --clip replaces the recorded CLIP (a folder that moved): the same candidates.
    moved, again = tmp_path / "moved-clip", tmp_path / "again.parquet"
    clip_dir.rename(moved)
    try:
        result = runner.invoke(app, ["retrieve", str(queries), "--index", str(index_dir), "--k", "3", "--reverse",
                                     "2", "--clip", str(moved), "--out", str(again), "--device", "cpu"])
    finally:
        moved.rename(clip_dir)
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(again).sort("query_id", "source", "rank").equals(found)


def test_safetensors_copy_gives_the_same_vectors(g3, photos, tmp_path):
    clip_dir, checkpoint, state = g3
    root, catalog = photos
    out = tmp_path / "g3.safetensors"
    result = CliRunner().invoke(app, ["index", "convert-g3", str(checkpoint), "--out", str(out)])
    assert result.exit_code == 0, result.output
    from safetensors import safe_open

    with safe_open(out, framework="pt") as file:
        assert set(file.keys()) == set(state)  # a faithful copy: text tower and location parts included
    pixels = torch.stack([reference_pixels(root / uri) for uri in catalog["uri"]]).float()
    from_pickle = load_backbone(f"g3:{checkpoint}?clip={clip_dir}", device="cpu").embed_pixels(pixels)
    from_safetensors = load_backbone(f"g3:{out}?clip={clip_dir}", device="cpu").embed_pixels(pixels)
    np.testing.assert_array_equal(from_pickle, from_safetensors)


def test_checkpoint_problems_are_named(g3, photos, tmp_path):
    clip_dir, _, state = g3
    root, _ = photos
    runner = CliRunner()

    def embed(checkpoint):
        return runner.invoke(app, ["embed", "--catalog", str(root / "catalog"), "--out", str(tmp_path / "e"),
                                   "--backbone", f"g3:{checkpoint}", "--clip", str(clip_dir), "--workers", "0",
                                   "--device", "cpu"])

    broken = {key: value for key, value in state.items() if key != "vision_projection_else_2.2.bias"}
    broken["vision_model.encoder.layers.7.mlp.fc1.weight"] = torch.zeros(2)
    broken["classifier.weight"] = torch.zeros(2)
    torch.save(broken, tmp_path / "broken.pth")
    result = embed(tmp_path / "broken.pth")
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "missing 1 key(s): vision_projection_else_2.2.bias" in message
    assert "unexpected 2 key(s): classifier.weight, vision_model.encoder.layers.7.mlp.fc1.weight" in message

    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")  # a whole pickled module, as G3's training script saves
    result = embed(tmp_path / "module.pth")
    assert result.exit_code == 2 and "not a plain state dict" in " ".join(result.stderr.split())
    torch.save([1, 2], tmp_path / "list.pth")
    result = embed(tmp_path / "list.pth")
    assert result.exit_code == 2 and "holds a list, not a state dict" in " ".join(result.stderr.split())
    result = embed(tmp_path / "absent.pth")
    assert result.exit_code == 2 and "no G3 checkpoint at" in " ".join(result.stderr.split())
    result = runner.invoke(app, ["embed", "--catalog", str(root / "catalog"), "--out", str(tmp_path / "e"),
                                 "--clip", str(clip_dir)])
    assert result.exit_code == 2 and "--backbone g3:PATH only" in " ".join(result.stderr.split())


def test_reverse_candidates_are_the_exact_search_for_the_negated_vector():
    """On G3-shaped vectors (three unit thirds): top 20 and reverse 20 equal a brute-force numpy search."""
    from geoloc.candidates import conform_candidates
    from geoloc.candidates.retrieval import retrieval_candidates
    from geoloc.index import GalleryIndex, build_faiss_index, plan_index

    rng = np.random.default_rng(3)
    thirds = rng.standard_normal((3, 300, 16)).astype(np.float32)
    vectors = np.concatenate([third / np.linalg.norm(third, axis=1, keepdims=True) for third in thirds], axis=1)
    gallery = pl.DataFrame({"image_id": [f"g{n}" for n in range(250)], "uri": [f"g/{n}.jpg" for n in range(250)],
                            "lat": rng.uniform(-90, 90, 250), "lon": rng.uniform(-180, 180, 250),
                            "text": [f"place {n}" for n in range(250)]})
    index = GalleryIndex(index=build_faiss_index(vectors[:250], plan_index(250, 48, "flat")), gallery=gallery,
                         info={"dim": 48, "backbone": "g3:x"})
    queries, ids = vectors[250:], [f"q{n}" for n in range(50)]
    similarity = queries @ vectors[:250].T
    for source, scores in (("retrieval", similarity), ("reverse", -similarity)):
        table = conform_candidates(retrieval_candidates(index, ids, queries, 20, source=source), "here")
        assert table.height == 50 * 20 and set(table["source"]) == {source}
        order = np.argsort(-scores, axis=1, kind="stable")[:, :20]
        assert table["ref_uri"].to_list() == gallery["uri"].gather(order.ravel()).to_list()
        assert table["rank"].to_list() == list(range(20)) * 50
        np.testing.assert_allclose(table["score"].to_numpy(), np.take_along_axis(scores, order, 1).ravel(),
                                   atol=1e-5)
        assert table["text"].to_list() == gallery["text"].gather(order.ravel()).to_list()
    reverse = retrieval_candidates(index, ids, queries, 20, source="reverse")
    assert (reverse["score"] > 0).all()  # higher = more dissimilar: -query . photo
