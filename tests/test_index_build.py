"""`geoloc index build` streams the embedding parts, fits a memory limit, and replaces an old index whole."""

import json
import os

import faiss
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.embeddings import embeddings_meta, read_embeddings, write_part
from geoloc.index import GalleryIndex, build_faiss_index, build_streamed, parse_bytes, plan_index


def clustered(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 200 centres, as photos of places are."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 200, rows)] + 0.4 * rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_gallery(root, vectors: np.ndarray, chunk_rows: int, failed_every: int = 0):
    """Embedding parts (every `failed_every`-th photo failed) and a catalog with place columns."""
    ids = pl.Series("image_id", [f"p{n:06d}" for n in range(len(vectors))])
    problems = [("OSError: broken" if failed_every and n % failed_every == 3 else None) for n in range(len(ids))]
    embeddings = root / "embeddings"
    embeddings.mkdir()
    for number, start in enumerate(range(0, len(ids), chunk_rows)):
        end = start + chunk_rows
        write_part(embeddings, number, ids[start:end], vectors[start:end], problems[start:end])
    meta = embeddings_meta("test-backbone", vectors.shape[1], ids, chunk_rows)
    (embeddings / "meta.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(1)
    catalog = root / "catalog"
    catalog.mkdir()
    pl.DataFrame({"image_id": ids.reverse(), "uri": [f"img/{i}.jpg" for i in ids.reverse()],
                  "lat": rng.uniform(-60, 60, len(ids)), "lon": rng.uniform(-170, 170, len(ids)),
                  "source": "photos", "city": "Lyon", "country": "France"}).write_parquet(catalog / "catalog.parquet")
    return embeddings, catalog, [i for i, problem in zip(ids, problems) if problem is None]


def build(embeddings, catalog, out, *options: str):
    result = CliRunner().invoke(app, ["index", "build", "--embeddings", str(embeddings), "--catalog", str(catalog),
                                      "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.split())


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_streamed_build_equals_an_in_memory_build(tmp_path, kind):
    vectors = clustered(3000, 32)
    embeddings, catalog, kept = write_gallery(tmp_path, vectors, chunk_rows=700, failed_every=50)
    stdout = build(embeddings, catalog, tmp_path / "index", "--kind", kind)
    assert "a peak of about" in stdout
    streamed = GalleryIndex.load(tmp_path / "index")
    assert streamed.gallery["image_id"].to_list() == kept
    assert streamed.gallery["text"][0] == "Lyon France"  # city and country as GeoRanker names a place
    _, ids, in_memory_vectors = read_embeddings(embeddings)
    assert ids.to_list() == kept
    in_memory = build_faiss_index(in_memory_vectors, plan_index(len(ids), 32, kind))
    queries = clustered(100, 32, seed=5)
    expected_scores, expected_rows = in_memory.search(queries, 10)
    scores, rows = streamed.search(queries, 10)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(scores, expected_scores)
    if kind == "flat":
        np.testing.assert_array_equal(faiss.rev_swig_ptr(streamed.index.get_xb(), in_memory_vectors.size),
                                      in_memory_vectors.ravel())


@pytest.mark.parametrize("kind", ["ivf", "ivfsq", "ivfpq"])
def test_lists_sized_before_adding_hold_what_adding_part_by_part_holds(kind):
    vectors = clustered(3000, 32)
    parts = [vectors[start:start + 700] for start in range(0, len(vectors), 700)]
    built = build_streamed(lambda: iter(parts), plan_index(len(vectors), 32, kind))
    by_parts = faiss.clone_index(built)  # the same training, emptied, then filled by FAISS's own add
    by_parts.reset()
    for part in parts:
        by_parts.add(part)
    assert built.ntotal == by_parts.ntotal == len(vectors)
    lists, expected = built.invlists, by_parts.invlists
    for list_no in range(built.nlist):
        size = lists.list_size(list_no)
        assert size == expected.list_size(list_no)
        np.testing.assert_array_equal(faiss.rev_swig_ptr(lists.get_ids(list_no), size),
                                      faiss.rev_swig_ptr(expected.get_ids(list_no), size))
        np.testing.assert_array_equal(faiss.rev_swig_ptr(lists.get_codes(list_no), size * lists.code_size),
                                      faiss.rev_swig_ptr(expected.get_codes(list_no), size * lists.code_size))


def test_a_small_memory_limit_picks_a_compressed_index_that_still_finds_neighbours(tmp_path, monkeypatch):
    monkeypatch.setattr("geoloc.index.resident_bytes", lambda: 0)  # the test process's own size is not the build's
    vectors = clustered(100_000, 32)
    embeddings, catalog, _ = write_gallery(tmp_path, vectors, chunk_rows=5000)
    stdout = build(embeddings, catalog, tmp_path / "index", "--max-memory", "16MB", "--nlist", "64", "--nprobe", "32")
    assert stdout.startswith("ivfsq index over 100,000 photos") and "(limit 16 MiB)" in stdout
    gallery = GalleryIndex.load(tmp_path / "index")
    assert gallery.info["kind"] == "ivfsq"
    queries = vectors[:300] + 0.05 * np.random.default_rng(2).standard_normal((300, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(32)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    _, found = gallery.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
    assert recall >= 0.9


def test_auto_keeps_the_vectors_while_they_fit_and_compresses_when_not():
    flat = plan_index(4_700_000, 768, part_rows=50_000)
    sq = plan_index(4_700_000, 768, "ivfsq", part_rows=50_000)
    pq = plan_index(4_700_000, 768, "ivfpq", part_rows=50_000)
    assert pq.peak_bytes() < sq.peak_bytes() < flat.peak_bytes()
    assert plan_index(4_700_000, 768, max_memory=flat.peak_bytes(), part_rows=50_000).kind == "ivf"
    assert plan_index(4_700_000, 768, max_memory=flat.peak_bytes() - 1, part_rows=50_000).kind == "ivfsq"
    assert plan_index(4_700_000, 2304, max_memory=32 * 2**30, part_rows=50_000).kind == "ivfsq"
    assert plan_index(4_700_000, 768, max_memory=sq.peak_bytes() - 1, part_rows=50_000).kind == "ivfpq"
    assert plan_index(4_700_000, 768, max_memory=1, part_rows=50_000).kind == "ivfpq"
    assert (parse_bytes("32GB"), parse_bytes("1.5 GiB"), parse_bytes("512m"), parse_bytes("1000")) == (
        32 * 2**30, 3 * 2**29, 512 * 2**20, 1000)
    with pytest.raises(ValueError, match="not a memory size"):
        parse_bytes("lots")


def test_a_build_failing_midway_leaves_the_old_index_whole(tmp_path, monkeypatch):
    embeddings, catalog, _ = write_gallery(tmp_path, clustered(400, 16), chunk_rows=150)
    out = tmp_path / "index"
    build(embeddings, catalog, out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def dies_midway(index, path):
        open(path, "wb").write(b"half an index")
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", dies_midway)
    result = CliRunner().invoke(app, ["index", "build", "--embeddings", str(embeddings), "--catalog", str(catalog),
                                      "--out", str(out), "--kind", "hnsw"])
    assert result.exit_code != 0 and str(result.exception) == "disk full"
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["catalog", "embeddings", "index"]


def test_a_folder_that_is_not_an_index_is_not_replaced(tmp_path):
    embeddings, catalog, _ = write_gallery(tmp_path, clustered(100, 16), chunk_rows=50)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["index", "build", "--embeddings", str(embeddings), "--catalog", str(catalog),
                                      "--out", str(tmp_path / "notes")])
    assert result.exit_code != 0 and "is not a gallery index" in result.output
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"


def test_the_default_memory_limit_is_the_containers(tmp_path, monkeypatch):
    """Without --max-memory the plan fits what the cgroup allows, not the machine's free memory."""
    from geoloc import machine

    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{48 << 20}\n")
    (cgroup / "memory.current").write_text(f"{16 << 20}\n")
    (tmp_path / "self-cgroup").write_text("0::/\n")
    monkeypatch.setattr(machine, "CGROUP_ROOT", cgroup)
    monkeypatch.setattr(machine, "PROC_SELF_CGROUP", tmp_path / "self-cgroup")
    embeddings, catalog, _ = write_gallery(tmp_path, clustered(500, 32), chunk_rows=500)
    stdout = build(embeddings, catalog, tmp_path / "index")
    assert "(limit 32 MiB)" in stdout


KILL_AT = '''
import os, signal, sys
import numpy as np
import polars as pl
import geoloc.tables as tables
from geoloc.index import build_faiss_index, plan_index, save_gallery_index

folder, step = sys.argv[1], sys.argv[2]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
real_exchange, real_replace = tables.exchange_paths, os.replace
if step == "before exchange":
    tables.exchange_paths = die
if step == "after exchange":
    tables.exchange_paths = lambda a, b: real_exchange(a, b) and die()
if step == "removing the old":
    tables.remove_folder = die
if step.startswith("no exchange"):
    tables.exchange_paths = lambda a, b: False
if step == "no exchange, between the renames":
    def replace_then_die(source, target):
        real_replace(source, target)
        if str(target).endswith(".old"):
            die()
    os.replace = replace_then_die
vectors = np.eye(4, 8, dtype=np.float32)
gallery = pl.DataFrame({"image_id": ["new"] * 4, "uri": "u", "lat": 1.0, "lon": 2.0, "text": None})
save_gallery_index(build_faiss_index(vectors, plan_index(4, 8, "flat")), gallery, plan_index(4, 8, "flat"),
                   folder, "new-backbone")
'''


@pytest.mark.parametrize("step", ["before exchange", "after exchange", "removing the old",
                                  "no exchange, between the renames", "no exchange"])
def test_a_build_killed_at_any_step_of_the_swap_leaves_an_index(tmp_path, step):
    """SIGKILL at each step of swapping the new index folder in: the old index or the new one loads, whole."""
    import os
    import subprocess
    import sys

    vectors = clustered(50, 8)
    embeddings, catalog, _ = write_gallery(tmp_path, vectors, chunk_rows=50)
    folder = tmp_path / "index"
    build(embeddings, catalog, folder)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", KILL_AT, str(folder), step], env=env, timeout=60)
    assert killed.returncode == (0 if step == "no exchange" else -9)
    loaded = GalleryIndex.load(folder)
    expected = "new-backbone" if step in ("after exchange", "removing the old", "no exchange") else "test-backbone"
    assert loaded.info["backbone"] == expected
    assert loaded.index.ntotal == len(loaded.gallery) == (4 if expected == "new-backbone" else 50)
    if step == "no exchange":
        assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_a_failed_second_rename_puts_the_old_index_back(tmp_path, monkeypatch):
    """Without atomic exchange, a failure after the old folder was moved aside restores it at once."""
    import os

    from geoloc.index import build_faiss_index, save_gallery_index

    embeddings, catalog, _ = write_gallery(tmp_path, clustered(50, 8), chunk_rows=50)
    folder = tmp_path / "index"
    build(embeddings, catalog, folder)
    monkeypatch.setattr("geoloc.tables.exchange_paths", lambda a, b: False)
    real_replace = os.replace

    def refuse_the_new(source, target):
        if str(source).endswith(".part") and target == folder:
            raise PermissionError("refused")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", refuse_the_new)
    gallery = pl.DataFrame({"image_id": ["n"], "uri": "u", "lat": 1.0, "lon": 2.0, "text": None})
    with pytest.raises(PermissionError):
        save_gallery_index(build_faiss_index(np.eye(1, 8, dtype=np.float32), plan_index(1, 8, "flat")), gallery,
                           plan_index(1, 8, "flat"), folder, "new")
    assert GalleryIndex.load(folder).info["backbone"] == "test-backbone"
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_bad_input_is_one_line_and_exit_2_a_bug_is_a_traceback_and_exit_1(tmp_path, monkeypatch):
    """An input check's error is the user's to fix (exit 2, no traceback); a ValueError from inside geoloc
    or a library is a bug, never reported as bad input (exit 1, with its traceback)."""
    import subprocess
    import sys

    embeddings, catalog, _ = write_gallery(tmp_path, clustered(50, 8), chunk_rows=50)
    runner = CliRunner()
    command = ["index", "build", "--embeddings", str(embeddings), "--catalog", str(catalog),
               "--out", str(tmp_path / "index")]
    result = runner.invoke(app, [*command, "--max-memory", "lots"])
    assert result.exit_code == 2 and "'lots' is not a memory size" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, [*command[:2], "--embeddings", str(tmp_path / "none"), *command[4:]])
    assert result.exit_code == 2 and "none" in result.output

    bug = ("import sys, geoloc.index\n"
           "def broken(*a, **k): raise ValueError('an internal invariant broke')\n"
           "geoloc.index.plan_index = broken\n"
           "from geoloc.cli import app\n"
           "app(sys.argv[1:])\n")
    crashed = subprocess.run([sys.executable, "-c", bug, *command], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert crashed.returncode == 1
    assert "Traceback (most recent call last)" in crashed.stderr and "an internal invariant broke" in crashed.stderr
