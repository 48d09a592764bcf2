"""Photo -> embedding -> index -> retrieval candidates, with a tiny CLIP built locally."""

import json

import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.embeddings import EmbeddingsError, read_embeddings
from geoloc.encode import embed_table
from geoloc.encode.loading import load_backbone
from geoloc.index import GalleryIndex, build_faiss_index, plan_index

PLACES = [("paris", 48.8584, 2.2945), ("sydney", -33.8568, 151.2153), ("rio", -22.9519, -43.2105),
          ("tokyo", 35.6586, 139.7454), ("cairo", 29.9792, 31.1342)]


@pytest.fixture
def catalog(tmp_path):
    """A folder of real JPEGs (one per place, each its own pattern), one corrupt file, and its catalog."""
    root = tmp_path / "dataset"
    (root / "img").mkdir(parents=True)
    rows = []
    for number, (name, lat, lon) in enumerate(PLACES):
        pixels = (np.random.default_rng(number).random((80, 80, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "img" / f"{name}.jpg", quality=95)
        rows.append((f"id-{name}", f"img/{name}.jpg", lat, lon, "photos"))
    (root / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    rows.append(("id-broken", "img/broken.jpg", 1.0, 1.0, "photos"))
    table = pl.DataFrame(rows, schema=["image_id", "uri", "lat", "lon", "source"], orient="row")
    (tmp_path / "catalog").mkdir()
    table.write_parquet(tmp_path / "catalog" / "catalog.parquet")
    return root, tmp_path / "catalog", table


def test_embed_resume_index_and_retrieve(tiny_clip, catalog, tmp_path):
    root, catalog_dir, table = catalog
    backbone = load_backbone(str(tiny_clip), device="cpu")
    out = tmp_path / "embeddings"
    summary = embed_table(
        table, lambda source, uri: (root / uri).read_bytes(), backbone, out, batch_size=4, chunk_rows=4
    )
    assert (summary.rows, summary.embedded, summary.failed, summary.parts_skipped) == (6, 5, 1, 0)
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 2
    broken = pl.read_parquet(parts[1]).filter(pl.col("image_id") == "id-broken")
    assert broken["embedding"][0] is None and "UnidentifiedImageError" in broken["error"][0]

    # A killed run resumes at the first missing part and redoes nothing else.
    parts[1].unlink()
    again = embed_table(table, lambda source, uri: (root / uri).read_bytes(), backbone, out, batch_size=4, chunk_rows=4)
    assert (again.embedded, again.failed, again.parts_skipped) == (5, 1, 1)
    other = table.head(3)
    with pytest.raises(EmbeddingsError, match="another run's embeddings .*ids, rows"):
        embed_table(other, lambda source, uri: (root / uri).read_bytes(), backbone, out)

    meta, ids, vectors = read_embeddings(out)
    assert meta["backbone"] == str(tiny_clip) and meta["dim"] == 768
    assert ids.to_list() == [f"id-{name}" for name, _, _ in PLACES]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)

    runner = CliRunner()
    index_dir = tmp_path / "index"
    result = runner.invoke(app, ["index", "build", "--embeddings", str(out), "--catalog", str(catalog_dir),
                                 "--out", str(index_dir)])
    assert result.exit_code == 0, result.output
    assert "flat index over 5 photos x 768 dims" in result.stdout
    gallery = GalleryIndex.load(index_dir)
    assert gallery.gallery["text"].str.contains("France").to_list()[0]

    # Queries: the Sydney photo again, and a JPEG re-encoding of the Tokyo one.
    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / "sydney-again.jpg").write_bytes((root / "img" / "sydney.jpg").read_bytes())
    Image.open(root / "img" / "tokyo.jpg").save(queries / "tokyo-again.png")
    candidates = tmp_path / "retrieval.parquet"
    result = runner.invoke(app, ["retrieve", str(queries), "--index", str(index_dir), "--k", "3", "--out",
                                 str(candidates), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    found = pl.read_parquet(candidates)
    assert found.columns == ["query_id", "source", "rank", "lat", "lon", "score", "text", "ref_uri"]
    assert found.height == 6 and found["source"].unique().to_list() == ["retrieval"]
    top = found.filter(pl.col("rank") == 0).sort("query_id")
    assert top["ref_uri"].to_list() == ["img/sydney.jpg", "img/tokyo.jpg"]
    assert top["score"][0] == pytest.approx(1.0, abs=1e-5)
    assert (top["lat"][0], top["lon"][0]) == (-33.8568, 151.2153)


def test_incomplete_embeddings_are_refused(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"rows": 10, "chunk_rows": 4, "dim": 8, "backbone": "x"}))
    with pytest.raises(EmbeddingsError, match="0 of 3 parts are done"):
        read_embeddings(tmp_path)
    with pytest.raises(EmbeddingsError, match="no meta.json"):
        read_embeddings(tmp_path / "nope")


def test_index_plans_and_their_memory():
    small = plan_index(50_000, 768)
    assert small.kind == "flat" and small.memory_bytes() == 50_000 * 768 * 4
    large = plan_index(4_700_000, 768)
    assert large.kind == "ivf" and large.nlist == 8192 and large.nprobe == 32  # about 4 sqrt(N), 1/256 probed
    assert large.memory_bytes() > 4_700_000 * 768 * 4
    assert plan_index(4_700_000, 768, "ivfpq").memory_bytes() < 4_700_000 * 120
    with pytest.raises(ValueError, match="unknown index kind"):
        plan_index(10, 8, "lsh")


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_approximate_indexes_find_true_neighbours(kind):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 64)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, 5000)] + 0.3 * rng.standard_normal((5000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    exact = build_faiss_index(vectors, plan_index(5000, 64, "flat"))
    approximate = build_faiss_index(vectors, plan_index(5000, 64, kind, nlist=32, nprobe=8))
    queries = vectors[:200]
    _, truth = exact.search(queries, 10)
    _, found = approximate.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
    assert recall >= (0.5 if kind == "ivfpq" else 0.9)


def test_mp16_shards_to_catalog_to_embeddings_to_retrieval(tiny_clip, tmp_path):
    """Photos inside MessagePack shards are embedded straight from the shards, never unpacked."""
    from datawriters import image_bytes, write_mp16

    mp16 = tmp_path / "mp16"
    photos = {f"ba/08/{n}.jpg": image_bytes(color=(40 * n, 255 - 40 * n, 90), size=(64, 48)) for n in range(5)}
    items = list(photos.items())
    write_mp16(mp16, [items[:3], items[3:]],
               [{"IMG_ID": name, "LAT": 10.0 + n, "LON": 20.0 - n} for n, name in enumerate(photos)])
    runner = CliRunner()
    catalog_dir, embeddings, index_dir = tmp_path / "catalog", tmp_path / "embeddings", tmp_path / "index"
    result = runner.invoke(app, ["catalog", "build", "--source", f"mp16={mp16}", "--out", str(catalog_dir)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["embed", "--catalog", str(catalog_dir), "--backbone", str(tiny_clip), "--out",
                                 str(embeddings), "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "5 photo(s) embedded, 0 unreadable" in result.stdout
    result = runner.invoke(app, ["embed", "--catalog", str(catalog_dir), "--backbone", str(tiny_clip), "--out",
                                 str(embeddings), "--workers", "0", "--device", "cpu"])
    assert "1 part(s) already done" in result.stdout
    result = runner.invoke(app, ["index", "build", "--embeddings", str(embeddings), "--catalog", str(catalog_dir),
                                 "--out", str(index_dir)])
    assert result.exit_code == 0, result.output
    query = tmp_path / "query.jpg"
    query.write_bytes(photos["ba/08/3.jpg"])
    out = tmp_path / "candidates.csv"
    result = runner.invoke(app, ["retrieve", str(query), "--index", str(index_dir), "--k", "2", "--out", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    best = pl.read_csv(out).row(0, named=True)
    assert best["ref_uri"].endswith("ba/08/3.jpg") and (best["lat"], best["lon"]) == (13.0, 17.0)


def test_a_hash_in_a_file_name_goes_from_catalog_to_embeddings_and_escapes_are_refused(tiny_clip, tmp_path):
    from datawriters import photo, write_files

    photos, table_dir = tmp_path / "photos", tmp_path / "table"
    write_files(photos, {"a#1.jpg": photo(48.85, 2.29, seed=1), "trip/b.jpg": photo(-33.85, 151.21, seed=2)})
    write_files(table_dir, {"c#3.jpg": photo(35.65, 139.74, seed=3)})
    pl.DataFrame({"path": ["c#3.jpg"], "lat": [35.65], "lon": [139.74]}).write_csv(table_dir / "points.csv")
    (tmp_path / "secret.jpg").write_bytes(photo(1.0, 1.0, seed=4))
    runner = CliRunner()
    catalog_dir, embeddings = tmp_path / "catalog", tmp_path / "embeddings"
    result = runner.invoke(app, ["catalog", "build", "--source", f"photos={photos}",
                                 "--source", f"csv={table_dir / 'points.csv'}", "--out", str(catalog_dir)])
    assert result.exit_code == 0, result.output
    catalog = pl.read_parquet(catalog_dir / "catalog.parquet")
    assert sorted(catalog["uri"]) == ["a#1.jpg", "c#3.jpg", "trip/b.jpg"]
    # A catalog edited by someone else: the row leaving the root is refused at embedding time.
    planted = catalog.head(1).with_columns(pl.lit("x").alias("image_id"), pl.lit("../secret.jpg").alias("uri"))
    pl.concat([catalog, planted]).write_parquet(catalog_dir / "catalog.parquet")
    result = runner.invoke(app, ["embed", "--catalog", str(catalog_dir), "--backbone", str(tiny_clip), "--out",
                                 str(embeddings), "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "3 photo(s) embedded, 1 unreadable" in result.stdout
    _, ids, vectors = read_embeddings(embeddings)
    table = pl.concat([pl.read_parquet(part) for part in sorted(embeddings.glob("part-*.parquet"))])
    refused = table.filter(pl.col("image_id") == "x")
    assert "'../secret.jpg'" in refused["error"][0] and "outside" in refused["error"][0]
    assert set(ids) == {"a#1.jpg", "c#3.jpg", "trip/b.jpg"} and len(vectors) == 3
