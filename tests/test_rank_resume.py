"""`geoloc ranker score` keeps finished queries as parts: a kill -9 loses only the part in flight,
a rerun with other settings refuses to mix, and processes started side by side split the parts."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from geoloc.cli import app
from geoloc.rank import ranking
from geoloc.rank.dryrun import toy_scoring_run
from geoloc.resumable import work_folder

ROOT = Path(__file__).resolve().parents[1]
QUERIES = 16


def write_world(root: Path, queries: int) -> Path:
    """A toy scoring run, and a query whose photo does not exist: reported, not predicted."""
    toy_scoring_run(root, queries)
    candidates = pl.read_parquet(root / "candidates.parquet")
    unreadable = candidates.head(1).with_columns(query_id=pl.lit("gone.jpg"), source=pl.lit("zeroshot"),
                                                 ref_uri=pl.lit(None, pl.Utf8))
    pl.concat([candidates, unreadable]).write_parquet(root / "candidates.parquet")
    return root


def arguments(world: Path, out: Path, *extra: str) -> list[str]:
    return ["ranker", "score", "--candidates", str(world / "candidates.parquet"), "--images", str(world / "photos"),
            "--adapter", str(world / "adapter"), "--base", str(world / "base"), "--out", str(out),
            "--part-queries", "1", "--negatives", "0", "--device", "cpu", *extra]


def start(world: Path, out: Path, **env: str) -> subprocess.Popen:
    """`geoloc ranker score` in a process of its own."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    return subprocess.Popen([sys.executable, "-c", "from geoloc.cli import main; main()", *arguments(world, out)],
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_world(tmp_path_factory.mktemp("resume"), QUERIES)


@pytest.fixture(scope="module")
def uninterrupted(world) -> pl.DataFrame:
    out = world / "uninterrupted.parquet"
    result = CliRunner().invoke(app, arguments(world, out))
    assert result.exit_code == 0, result.output
    assert not work_folder(out).exists()
    predictions = pl.read_parquet(out)
    assert predictions.height == QUERIES
    return predictions


def test_a_killed_run_resumes_where_it_stopped_and_writes_what_an_uninterrupted_run_writes(
        world, uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "predictions.parquet"
    parts = work_folder(out)
    process = start(world, out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and len(list(parts.glob("part-*.parquet"))) < 8:
        time.sleep(0.005)
    assert process.poll() is None, process.communicate()[0]
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert not out.exists()
    finished = len(list(parts.glob("part-*.parquet")))
    assert 8 <= finished < QUERIES + 1

    scored, progress, said = [], [], []
    rewards = ranking.RewardScorer.rewards
    monkeypatch.setattr(ranking.RewardScorer, "rewards", lambda self, group: scored.append(1) or rewards(self, group))
    report = ranking.score_file(
        world / "candidates.parquet", out, images=world / "photos", adapter=world / "adapter",
        base=str(world / "base"), num_negatives=0, device="cpu", part_queries=1,
        progress=lambda done, total: progress.append((done, total)), say=said.append)
    assert len(scored) == QUERIES + 1 - finished  # parts finish in order: the unreadable query's (0) was done
    assert said == [f"resuming: {finished} of {QUERIES + 1} queries already scored in {parts}"]
    assert progress[0] == (finished, QUERIES + 1) and progress[-1] == (QUERIES + 1, QUERIES + 1)
    assert report.written and report.queries == QUERIES + 1 and report.predicted == QUERIES
    assert [query for query, _ in report.unreadable_queries] == ["gone.jpg"]
    assert pl.read_parquet(out).equals(uninterrupted)
    assert not parts.exists()


def test_a_rerun_with_other_settings_refuses_the_parts_until_restarted(world, uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "predictions.parquet"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")  # scores a third of the parts, leaves the rest to other processes
    result = CliRunner().invoke(app, arguments(world, out))
    assert result.exit_code == 0, result.output
    assert "part(s) still with other processes" in result.output and not out.exists()
    assert len(list(work_folder(out).glob("part-*.parquet"))) == 6
    under_launcher = CliRunner().invoke(app, arguments(world, out, "--restart"))
    assert under_launcher.exit_code == 2 and "--restart under a launcher" in under_launcher.output
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")

    refused = CliRunner().invoke(app, arguments(world, out, "--batch-size", "3"))
    assert refused.exit_code == 2
    assert "other settings (different batch_size)" in refused.output and "--restart" in refused.output
    assert not out.exists()

    restarted = CliRunner().invoke(app, arguments(world, out, "--batch-size", "3", "--restart"))
    assert restarted.exit_code == 0, restarted.output
    assert "resuming" not in restarted.output
    assert pl.read_parquet(out).equals(uninterrupted)


def test_two_processes_split_one_run_and_the_last_writes_what_one_process_writes(world, uninterrupted, tmp_path):
    out = tmp_path / "predictions.parquet"
    processes = [start(world, out, RANK=str(rank), WORLD_SIZE="2") for rank in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert any(f"{QUERIES} of {QUERIES + 1} queries predicted" in output for output in outputs), outputs
    assert pl.read_parquet(out).equals(uninterrupted)
    assert not work_folder(out).exists()


def test_each_process_under_a_launcher_takes_its_own_gpu(monkeypatch):
    from geoloc.resumable import Share

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert ranking.default_device(Share(6, 8)) == "cuda:2"
    monkeypatch.delenv("LOCAL_RANK")
    assert ranking.default_device(Share(5, 8)) == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ranking.default_device(Share(5, 8)) == "cpu"
