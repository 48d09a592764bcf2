"""`geoloc landmarks resolve` against a local, sometimes misbehaving, stand-in of the MediaWiki API."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import polars as pl
import pytest
from mediawiki_standin import COORDINATES_PER_RESPONSE, StandIn, Wiki
from typer.testing import CliRunner

from geoloc.catalog.landmarks import BATCH_TITLES, Politeness, category_titles, resolve_landmarks
from geoloc.cli import app

ROOT = Path(__file__).resolve().parents[1]
FAST = Politeness(backoff_seconds=0.001, attempts=4)
COMMONS = "http://commons.wikimedia.org/wiki/"


def place(n: int) -> tuple[float, float]:
    return round(-60 + n * 0.01, 6), round(-170 + n * 0.02, 6)


def write_categories(path: Path, categories: dict[int, str]) -> Path:
    pl.DataFrame({"landmark_id": list(categories), "category": list(categories.values())}).write_csv(path)
    return path


def many(count: int) -> tuple[Wiki, dict[int, str]]:
    wiki = Wiki(pages={f"Category:Landmark {n}": {"coordinates": place(n)} for n in range(count)})
    return wiki, {n: f"{COMMONS}Category:Landmark_{n}" for n in range(count)}


@pytest.fixture
def mixed(tmp_path):
    wiki, categories = many(2 * BATCH_TITLES + 3)
    wiki.pages.update({
        "Category:Via item": {"item": "Q1"},
        "Category:Item without coordinates": {"item": "Q2"},
        "Category:Nothing known": {},
        "Category:Null island": {"coordinates": (0.0, 0.0)},
        "Category:Old name target": {"coordinates": (10.0, 20.0)},
    })
    wiki.redirects = {"Category:Old name": "Category:Old name target"}
    wiki.items = {"Q1": (45.4340, 12.3388), "Q2": None}
    categories.update({
        1001: f"{COMMONS}Category:via_item",
        1002: "Category:Item_without_coordinates",
        1003: f"{COMMONS}Category:Nothing_known",
        1004: f"{COMMONS}Category:Null_island",
        1005: f"{COMMONS}Category:Does_not_exist",
        1006: "https://example.org/not-a-category",
        1007: f"{COMMONS}Category:Old%20name",
    })
    return wiki, write_categories(tmp_path / "categories.csv", categories)


def test_category_titles_are_decoded_and_normalized():
    titles = category_titles(pl.Series([f"{COMMONS}Category:Caf%C3%A9_de_Flore", "Category:A_b", "File:x.jpg", None]))
    assert titles.to_list() == ["Category:Café de Flore", "Category:A b", None, None]


def test_resolves_through_commons_continuation_redirects_and_wikidata(mixed, tmp_path):
    wiki, categories = mixed
    out = tmp_path / "coords.csv"
    with StandIn(wiki) as url:
        summary = resolve_landmarks(categories, out, commons_api=url, wikidata_api=url, politeness=FAST)
    coords = {row[0]: row[1:] for row in pl.read_csv(out).iter_rows()}
    assert all(coords[n] == place(n) for n in range(2 * BATCH_TITLES + 3))
    assert coords[1001] == (45.4340, 12.3388) and coords[1007] == (10.0, 20.0)
    assert (0.0, 0.0) not in coords.values()
    unresolved = dict(pl.read_csv(tmp_path / "coords.unresolved.csv").select("landmark_id", "reason").iter_rows())
    assert unresolved == {1002: "no_coordinates", 1003: "no_coordinates", 1004: "null_island", 1005: "missing_page",
                          1006: "bad_category"}
    assert summary.resolved == len(coords) and sum(summary.unresolved.values()) == len(unresolved)
    assert wiki.requests["query"] >= 2 * (BATCH_TITLES - 2) // COORDINATES_PER_RESPONSE  # continuation followed
    assert wiki.requests["wbgetentities"] == 1
    assert all("geoloc" in agent for agent in wiki.user_agents) and wiki.maxlags == {"5"}


def test_survives_429_503_and_maxlag(mixed, tmp_path):
    wiki, categories = mixed
    calm_out, rough_out = tmp_path / "calm.csv", tmp_path / "rough.csv"
    with StandIn(wiki) as url:
        calm = resolve_landmarks(categories, calm_out, commons_api=url, wikidata_api=url, politeness=FAST)
        wiki.faults = ["429", "503", "maxlag", "429", "maxlag", "503"]
        rough = resolve_landmarks(categories, rough_out, commons_api=url, wikidata_api=url, politeness=FAST)
    assert rough.requests == calm.requests + 6 and not wiki.faults
    assert pl.read_csv(rough_out).equals(pl.read_csv(calm_out))


def test_failed_batches_are_reported_then_retried_on_the_next_run(tmp_path):
    wiki, categories = many(10)
    path = write_categories(tmp_path / "categories.csv", categories)
    out = tmp_path / "coords.csv"
    with StandIn(wiki) as url:
        wiki.faults = ["503"] * FAST.attempts
        failed = resolve_landmarks(path, out, commons_api=url, wikidata_api=url, politeness=FAST)
        assert failed.resolved == 0 and failed.unresolved == {"request_failed": 10} and failed.failed_batches == 1
        retried = resolve_landmarks(path, out, commons_api=url, wikidata_api=url, politeness=FAST)
    assert retried.resolved == 10 and retried.requests == 2


def test_a_finished_run_sends_no_request_and_concurrency_is_bounded(tmp_path):
    wiki, categories = many(12 * BATCH_TITLES)
    wiki.latency_seconds = 0.02
    path = write_categories(tmp_path / "categories.csv", categories)
    with StandIn(wiki) as url:
        first = resolve_landmarks(path, tmp_path / "a.csv", commons_api=url, wikidata_api=url,
                                  politeness=Politeness(concurrency=3))
        again = resolve_landmarks(path, tmp_path / "b.csv", cache_path=tmp_path / "a.cache.sqlite",
                                  commons_api=url, wikidata_api=url)
    assert first.requests > 12 and again.requests == 0
    assert 1 < wiki.max_in_flight <= 3
    assert pl.read_csv(tmp_path / "a.csv").equals(pl.read_csv(tmp_path / "b.csv"))


def cached_pages(cache: Path) -> int:
    """Pages committed so far by another process (0 before it has created its tables)."""
    try:
        with closing(sqlite3.connect(f"file:{cache}?mode=ro", uri=True)) as connection:
            return connection.execute("SELECT count(*) FROM pages").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    batches, done_before_kill = 12, 3
    count = batches * BATCH_TITLES
    per_batch = -(-BATCH_TITLES // COORDINATES_PER_RESPONSE)
    wiki, categories = many(count)
    wiki.latency_seconds = 0.02
    path = write_categories(tmp_path / "categories.csv", categories)
    out, cache = tmp_path / "coords.csv", tmp_path / "coords.cache.sqlite"
    script = (
        "import sys; from pathlib import Path; from geoloc.catalog.landmarks import resolve_landmarks, Politeness\n"
        "resolve_landmarks(Path(sys.argv[1]), Path(sys.argv[2]), commons_api=sys.argv[3], wikidata_api=sys.argv[3],"
        " politeness=Politeness(concurrency=1))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with StandIn(wiki) as url:
        process = subprocess.Popen([sys.executable, "-c", script, str(path), str(out), url], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        cached = 0
        while time.monotonic() < deadline and process.poll() is None and cached < done_before_kill * BATCH_TITLES:
            time.sleep(0.02)
            cached = cached_pages(cache)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        assert not out.exists()
        before = sum(wiki.requests.values())
        resumed = resolve_landmarks(path, out, commons_api=url, wikidata_api=url, politeness=FAST)
    assert resumed.resolved == count
    assert resumed.requests == sum(wiki.requests.values()) - before
    assert before >= done_before_kill * per_batch
    assert resumed.requests <= (batches - done_before_kill) * per_batch


def test_cli(mixed, tmp_path):
    wiki, categories = mixed
    with StandIn(wiki) as url:
        result = CliRunner().invoke(app, ["landmarks", "resolve", str(categories), "--out", str(tmp_path / "c.csv"),
                                          "--commons-api", url, "--wikidata-api", url])
    assert result.exit_code == 0, result.output
    assert "resolved" in result.output and "bad_category" in result.output
    arguments = ["landmarks", "resolve", str(tmp_path / "none.csv"), "--out", str(tmp_path / "c.csv")]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2 and "no such file" in result.output


def test_an_api_error_other_than_lag_fails_its_batch_only(tmp_path):
    wiki, categories = many(3)
    path = write_categories(tmp_path / "categories.csv", categories)
    wiki.faults = ["badvalue"]
    with StandIn(wiki) as url:
        summary = resolve_landmarks(path, tmp_path / "c.csv", commons_api=url, wikidata_api=url, politeness=FAST)
    assert summary.failed_batches == 1 and "badvalue" in summary.errors[0]
    assert summary.unresolved == {"request_failed": 3}
