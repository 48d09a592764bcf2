"""The Ray engines give what the local engine gives, even when a worker is killed mid-run.

A local Ray (2 CPUs) is started once for the module; each killed worker is one of our
own task functions exiting its process the first time it runs (tests/raycrash.py).
Marked `ray`: the default run skips them, CI runs them once (`pytest -m ray`).
"""

import functools
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import raycrash
from datawriters import image_bytes, photo, write_files, write_mp16, write_wwgeotag
from typer.testing import CliRunner

from geoloc.catalog import BuildOptions, build_catalog
from geoloc.catalog import scan as scan_module
from geoloc.catalog import sources as sources_module
from geoloc.cli import app
from geoloc.embeddings import read_embeddings
from geoloc.encode import CatalogImages, embed_table
from geoloc.encode.loading import load_backbone

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'geoloc[ray]')")

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("catalog.parquet", "quarantine.parquet", "path_to_coords.csv")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """A local Ray whose workers import this checkout and the crash helpers."""
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


@pytest.fixture
def sources(tmp_path) -> list[tuple[str, Path]]:
    """MP-16 shards (the last record truncated, one photo without metadata), EXIF folders, a duplicate across them."""
    mp16 = tmp_path / "mp16"
    shards = [[(f"aa/{n}.jpg", photo(40 + n, 10 - n, seed=n)) for n in range(4)],
              [(f"bb/{n}.jpg", photo(-30 + n, 120 + n, seed=10 + n)) for n in range(4)]]
    write_mp16(mp16, shards, [{"IMG_ID": name, "LAT": 40.0 + n, "LON": 10.0 - n}
                              for n, (name, _) in enumerate(shards[0] + shards[1][:2])], truncate_last=5)
    geotag = tmp_path / "geotag"
    files = {f"{n % 3 + 1}/{n:03d}.jpg": photo(n - 20, 2 * n, seed=100 + n) for n in range(30)}
    files |= {"1/no-gps.jpg": image_bytes(None), "2/cut.jpg": b"\xff\xd8 cut", "3/again.jpg": photo(42, 8, seed=2)}
    write_wwgeotag(geotag, files)
    photos = tmp_path / "photos"
    write_files(photos, {f"trip/{n}.jpg": photo(5 + n, 5, seed=200 + n) for n in range(12)})
    return [("mp16", mp16), ("wwgeotag", geotag), ("photos", photos)]


def test_catalog_on_ray_equals_local_and_survives_killed_workers(sources, tmp_path, monkeypatch):
    local = tmp_path / "local"
    build_catalog(sources, local, BuildOptions(local / ".work", workers=1, chunk_files=4))
    scan_marker, shard_marker = tmp_path / "scan-crashed", tmp_path / "shard-crashed"
    monkeypatch.setattr(scan_module, "inspect_files",
                        functools.partial(raycrash.crashing_once, str(scan_marker), scan_module.inspect_files))
    monkeypatch.setattr(sources_module, "index_shard",
                        functools.partial(raycrash.crashing_once, str(shard_marker), sources_module.index_shard))
    on_ray = tmp_path / "ray"
    arguments = ["catalog", "build", "--engine", "ray", "--out", str(on_ray)]
    for kind, path in sources:
        arguments += ["--source", f"{kind}={path}"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert scan_marker.exists() and shard_marker.exists(), "no worker was killed"
    for name in OUTPUTS:
        assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name
    catalog = pl.read_parquet(on_ray / "catalog.parquet")
    quarantine = pl.read_parquet(on_ray / "quarantine.parquet")
    assert catalog["image_id"].is_unique().all() and catalog.height == 4 + 2 + 30 + 12
    assert set(quarantine["reason"]) == {"corrupt_image", "missing_metadata", "no_gps", "duplicate"}


@pytest.fixture
def photo_catalog(tmp_path) -> Path:
    photos = tmp_path / "photos"
    write_files(photos, {f"{n:02d}.jpg": photo(n, -n, seed=n) for n in range(1, 23)})
    out = tmp_path / "catalog"
    build_catalog([("photos", photos)], out, BuildOptions(out / ".work", workers=1))
    return out


def test_embeddings_on_ray_equal_local_ones_and_survive_a_killed_task_and_actor(photo_catalog, tiny_clip, tmp_path):
    items = pl.read_parquet(photo_catalog / "catalog.parquet").select("image_id", "uri", "source")
    local = tmp_path / "local"
    embed_table(items, CatalogImages(photo_catalog), load_backbone(str(tiny_clip), device="cpu"), local,
                batch_size=4, chunk_rows=10)
    from geoloc.encode.ray_engine import embed_table_ray

    read_marker, actor_marker = tmp_path / "read-crashed", tmp_path / "actor-crashed"
    on_ray = tmp_path / "ray"
    done = []
    summary = embed_table_ray(
        items, raycrash.CrashingRead(CatalogImages(photo_catalog), str(read_marker)), str(tiny_clip), on_ray,
        batch_size=4, chunk_rows=10, load=functools.partial(raycrash.crashing_backbone, str(actor_marker),
                                                             str(tiny_clip)),
        on_progress=done.append,
    )
    assert read_marker.exists() and actor_marker.exists(), "no worker was killed"
    assert (summary.rows, summary.embedded, summary.failed, summary.parts_skipped) == (22, 22, 0, 0)
    assert sum(done) == 22
    names = sorted(p.name for p in local.glob("part-*.parquet"))
    assert names == sorted(p.name for p in on_ray.glob("part-*.parquet")) and len(names) == 3
    assert (on_ray / "meta.json").read_text() == (local / "meta.json").read_text()
    for name in names:
        assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name
    _, ids, vectors = read_embeddings(on_ray)
    assert ids.is_unique().all() and ids.to_list() == items["image_id"].to_list()
    np.testing.assert_array_equal(vectors, read_embeddings(local)[2])


def test_cli_embed_on_ray_resumes_a_part_and_refuses_bad_engines(photo_catalog, tiny_clip, tmp_path):
    out = tmp_path / "embeddings"
    command = ["embed", "--catalog", str(photo_catalog), "--backbone", str(tiny_clip), "--out", str(out),
               "--engine", "ray", "--batch-size", "8", "--chunk-rows", "16", "--actors", "1"]
    runner = CliRunner()
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "22 photo(s) embedded, 0 unreadable" in " ".join(result.stdout.split())
    first = (out / "part-00001.parquet").read_bytes()
    (out / "part-00001.parquet").unlink()
    result = runner.invoke(app, command)
    assert result.exit_code == 0 and "1 part(s) already done" in " ".join(result.stdout.split())
    assert pl.read_parquet(out / "part-00001.parquet").equals(pl.read_parquet(first))
    result = runner.invoke(app, [*command[:-6], "--engine", "spark"])
    assert result.exit_code == 2 and "expected one of local, ray" in result.output


def test_cli_embed_on_ray_takes_the_g3_backbone_like_any_other(photo_catalog, tmp_path):
    """`--backbone g3:PATH --clip DIR` reaches the actors and workers by name: the same vectors as a local run."""
    from conftest import build_tiny_g3

    clip_dir, checkpoint = build_tiny_g3(tmp_path / "g3")
    runner = CliRunner()
    common = ["embed", "--catalog", str(photo_catalog), "--backbone", f"g3:{checkpoint}", "--clip", str(clip_dir),
              "--device", "cpu", "--batch-size", "4", "--chunk-rows", "10"]
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "local"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "ray"), "--engine", "ray"])
    assert result.exit_code == 0, result.output
    local, on_ray = read_embeddings(tmp_path / "local"), read_embeddings(tmp_path / "ray")
    assert on_ray[0] == local[0] and on_ray[0]["backbone"].startswith(f"g3:{checkpoint.resolve()}?clip=")
    assert on_ray[1].to_list() == local[1].to_list()
    np.testing.assert_array_equal(on_ray[2], local[2])
