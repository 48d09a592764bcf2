"""Scoring: the shared-prefix path equals the plain one, and `geoloc ranker score` feeds `geoloc evaluate`."""

import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.evaluate import evaluate_files
from geoloc.rank.dryrun import random_photo, toy_query_group
from geoloc.rank.model import save_adapter
from geoloc.rank.prompts import Place
from geoloc.rank.scoring import QueryGroup, RewardScorer


def vision_patches(model) -> list[int]:
    """Records how many patches go through the vision tower, call by call."""
    calls = []
    model.get_base_model().model.visual.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(int(args[0].shape[0])), with_kwargs=True
    )
    return calls


def test_shared_prefix_equals_plain_and_sees_the_query_photo_once(tiny):
    base, model, processor = tiny
    rng = np.random.default_rng(0)
    group = toy_query_group(rng, retrieval=4, zeroshot=3, photo_size=56)
    group.gallery_photos[1] = random_photo(rng, (84, 56))  # photos of different sizes in one batch
    calls = vision_patches(model)
    plain = RewardScorer(model, processor, batch_size=3, shared_prefix=False).rewards(group)
    plain_patches = sum(calls)
    calls.clear()
    final_mlp_tokens = []
    hook = model.get_base_model().model.language_model.layers[-1].mlp.register_forward_hook(
        lambda module, args, output: final_mlp_tokens.append(tuple(args[0].shape[:2]))
    )
    shared = RewardScorer(model, processor, batch_size=3, shared_prefix=True).rewards(group)
    hook.remove()
    shared_patches = sum(calls)
    one_by_one = RewardScorer(model, processor, batch_size=1, shared_prefix=True).rewards(group)
    assert plain.shape == (7,) and np.ptp(plain) > 1e-3
    np.testing.assert_allclose(shared, plain, rtol=0, atol=1e-4)
    np.testing.assert_allclose(one_by_one, plain, rtol=0, atol=1e-4)
    query_patches, gallery_patches = 16, 3 * 16 + 24  # 14 px patches: 4 x 4 for 56 px, 6 x 4 for 84 x 56
    assert calls[0] == query_patches  # the prefix: the query photo alone
    assert shared_patches == query_patches + gallery_patches
    assert plain_patches == 7 * query_patches + gallery_patches
    # The last layer's MLP reads one token per row: the prefix, then 3 and 1 photo prompts, then 3 zero-shot ones.
    assert final_mlp_tokens == [(1, 1), (3, 1), (1, 1), (3, 1)]


def test_shared_prefix_with_a_single_candidate(tiny):
    _, model, processor = tiny
    rng = np.random.default_rng(1)
    group = QueryGroup(random_photo(rng, 56), [Place(10.5, -20.25, "Lima Peru")], [random_photo(rng, 56)], [])
    plain = RewardScorer(model, processor, shared_prefix=False).rewards(group)
    shared = RewardScorer(model, processor, shared_prefix=True).rewards(group)
    np.testing.assert_allclose(shared, plain, rtol=0, atol=1e-4)


def test_cli_score_writes_predictions_that_evaluate_reads(tiny, tmp_path):
    base, model, processor = tiny
    adapter = save_adapter(model, tmp_path / "adapter")
    rng = np.random.default_rng(2)
    (tmp_path / "queries").mkdir()
    (tmp_path / "gallery").mkdir()
    for query in ("a.jpg", "b.jpg"):
        random_photo(rng, 56).save(tmp_path / "queries" / query)
    for index in range(4):
        random_photo(rng, 56).save(tmp_path / "gallery" / f"g{index}.jpg")
    candidates = pl.DataFrame({
        "query_id": ["a.jpg"] * 5 + ["b.jpg"] * 3 + ["missing.jpg"],
        "source": ["retrieval"] * 3 + ["zeroshot"] * 2 + ["retrieval", "retrieval", "zeroshot", "zeroshot"],
        "rank": [0, 1, 2, 0, 1, 0, 1, 0, 0],
        "lat": [48.85, 35.68, -1.29, 40.71, -12.05, 52.52, 51.5, 41.9, 0.0],
        "lon": [2.35, 139.69, 36.82, -74.0, -77.04, 13.4, -0.12, 12.5, 0.0],
        "score": [0.9, 0.8, 0.7, 0.0, 0.0, 0.9, 0.8, 0.0, 0.0],
        "text": ["Paris France", "Tokyo Japan", "Nairobi Kenya", None, None, "Berlin Germany", "London", None, None],
        "ref_uri": ["g0.jpg", "g1.jpg", "g2.jpg", None, None, "g3.jpg", "gone.jpg", None, None],
    })
    candidates.write_parquet(tmp_path / "candidates.parquet")
    pl.DataFrame({"image_id": ["a.jpg", "b.jpg", "missing.jpg"], "lat": [48.0, 52.0, 1.0],
                  "lon": [2.0, 13.0, 1.0]}).write_csv(tmp_path / "truth.csv")
    out = tmp_path / "predictions.parquet"
    result = CliRunner().invoke(app, [
        "ranker", "score", "--candidates", str(tmp_path / "candidates.parquet"), "--images",
        str(tmp_path / "queries"), "--gallery", str(tmp_path / "gallery"), "--adapter", str(adapter),
        "--base", base, "--out", str(out), "--top", "retrieval=2", "--negatives", "1", "--batch-size", "2",
        "--raw-photos",  # the default preparation is GeoRanker's: tests/test_georanker_fidelity.py
    ])
    assert result.exit_code == 0, result.output
    assert "1 query photo(s) unreadable" in result.output and "1 candidate(s) dropped" in result.output
    predictions = pl.read_parquet(out)
    assert predictions.columns == ["image_id", "lat", "lon", "score"]
    assert predictions["image_id"].to_list() == ["a.jpg", "b.jpg"]

    # Query a: retrieval ranks 0-1 with their photos, both zero-shot ones; the negative is retrieval rank 2.
    def photo(path):
        return Image.open(path).convert("RGB")

    expected_group = QueryGroup(
        query_photo=photo(tmp_path / "queries" / "a.jpg"),
        candidates=[Place(48.85, 2.35, "Paris France"), Place(35.68, 139.69, "Tokyo Japan"),
                    Place(40.71, -74.0), Place(-12.05, -77.04)],
        gallery_photos=[photo(tmp_path / "gallery" / "g0.jpg"), photo(tmp_path / "gallery" / "g1.jpg"), None, None],
        negatives=[Place(-1.29, 36.82, "Nairobi Kenya")],
    )
    expected = RewardScorer(model, processor, shared_prefix=False).rewards(expected_group)
    best = int(np.argmax(expected))
    row = predictions.row(0, named=True)
    assert (row["lat"], row["lon"]) == (expected_group.candidates[best].lat, expected_group.candidates[best].lon)
    assert row["score"] == pytest.approx(float(expected[best]), abs=1e-4)

    evaluation = evaluate_files(out, tmp_path / "truth.csv")
    assert evaluation.metrics["n"] == 3 and evaluation.metrics["missing"] == 1
