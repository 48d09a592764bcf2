"""Landmark coordinates from Wikimedia Commons categories, politely and resumably.

Google Landmarks v2 names each landmark by a Commons category URL. One action-API
request asks for the coordinates and the Wikidata item of up to 50 categories at once
(following `continue`); categories without coordinates fall back to their Wikidata
item's coordinate location (P625) through `wbgetentities`, 50 items a request. Every
answer is committed to an SQLite cache as it arrives, so a killed run resumes where it
stopped and a finished one sends no request at all.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import httpx
import polars as pl

from geoloc import __version__
from geoloc.catalog.build import coordinate_reasons
from geoloc.progress import progress_bar
from geoloc.tables import open_answer_cache, read_table, select_layout, write_table

COMMONS_API = "https://commons.wikimedia.org/w/api.php"
WIKIDATA_API = "https://www.wikidata.org/w/api.php"
USER_AGENT = f"geoloc/{__version__} (landmark coordinate resolver; photo geolocalization research)"
BATCH_TITLES = 50
"""The action API's limit on titles or ids per request for ordinary clients."""
COORDINATE_PROPERTY = "P625"

CATEGORY_LAYOUTS = [{"landmark_id": "landmark_id", "category": "category"}]

RESOLVED = "resolved"
NEEDS_ITEM = "needs_item"
MISSING_PAGE = "missing_page"
NO_COORDINATES = "no_coordinates"
BAD_CATEGORY = "bad_category"
REQUEST_FAILED = "request_failed"
UNRESOLVED_REASONS = (BAD_CATEGORY, MISSING_PAGE, NO_COORDINATES, "bad_coordinates", "null_island", REQUEST_FAILED)


class ResolveError(RuntimeError):
    """The API kept failing for one batch after every retry."""


@dataclass(frozen=True)
class Politeness:
    """How hard we lean on the API: the defaults follow the Wikimedia API etiquette."""

    concurrency: int = 4
    maxlag: int = 5
    attempts: int = 8
    backoff_seconds: float = 1.0
    max_wait_seconds: float = 120.0
    timeout_seconds: float = 60.0


@dataclass
class ResolveSummary:
    resolved: int
    unresolved: dict[str, int]
    requests: int
    failed_batches: int = 0
    errors: list[str] = field(default_factory=list)


def category_titles(categories: pl.Series) -> pl.Series:
    """Page titles ("Category:Eiffel Tower") from Commons category URLs or bare titles; null if not one."""
    path = categories.str.strip_chars().str.replace(r"^https?://[^/]+/wiki/", "")
    unique = path.unique().drop_nulls()
    decoded = dict(zip(unique.to_list(), (unquote(value).replace("_", " ").strip() for value in unique.to_list())))
    titles = path.replace_strict(decoded, default=None, return_dtype=pl.Utf8)
    return titles.set(~titles.str.starts_with("Category:").fill_null(False), None)


_CACHE_SCHEMAS = {
    "pages": {"title": pl.Utf8, "status": pl.Utf8, "lat": pl.Float64, "lon": pl.Float64, "item": pl.Utf8},
    "items": {"item": pl.Utf8, "status": pl.Utf8, "lat": pl.Float64, "lon": pl.Float64},
}


class Cache:
    """Answers keyed by the title or item we asked for; committed batch by batch."""

    def __init__(self, path: Path) -> None:
        self.connection = open_answer_cache(
            path,
            "CREATE TABLE IF NOT EXISTS pages (title TEXT PRIMARY KEY, status TEXT, lat REAL, lon REAL, item TEXT)",
            "CREATE TABLE IF NOT EXISTS items (item TEXT PRIMARY KEY, status TEXT, lat REAL, lon REAL)",
        )

    def missing(self, table: str, key: str, wanted: Iterable[str]) -> list[str]:
        known = {row[0] for row in self.connection.execute(f"SELECT {key} FROM {table}")}
        return sorted(set(wanted) - known)

    def store(self, table: str, rows: Sequence[tuple]) -> None:
        marks = ", ".join("?" * len(rows[0]))
        with self.connection:
            self.connection.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", rows)

    def pending_items(self) -> list[str]:
        return [row[0] for row in self.connection.execute(
            "SELECT DISTINCT item FROM pages WHERE status = ? AND item NOT IN (SELECT item FROM items)", (NEEDS_ITEM,))]

    def frame(self, table: str) -> pl.DataFrame:
        rows = self.connection.execute(f"SELECT * FROM {table}").fetchall()
        return pl.DataFrame(rows, schema=_CACHE_SCHEMAS[table], orient="row")

    def close(self) -> None:
        self.connection.close()


class _Client:
    """GET with the etiquette: User-Agent, maxlag, bounded concurrency, Retry-After, exponential backoff."""

    def __init__(self, politeness: Politeness) -> None:
        self.politeness = politeness
        self.requests = 0
        self.semaphore = asyncio.Semaphore(politeness.concurrency)
        self.http = httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT}, timeout=politeness.timeout_seconds,
            limits=httpx.Limits(max_connections=politeness.concurrency),
        )

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(float(retry_after), self.politeness.max_wait_seconds)
            except ValueError:
                pass
        backoff = self.politeness.backoff_seconds * 2**attempt
        return min(backoff * (1 + random.random() / 2), self.politeness.max_wait_seconds)

    async def get(self, url: str, params: dict[str, str]) -> dict:
        params = {**params, "format": "json", "formatversion": "2", "maxlag": str(self.politeness.maxlag)}
        problem = ""
        for attempt in range(self.politeness.attempts):
            async with self.semaphore:
                self.requests += 1
                try:
                    response = await self.http.get(url, params=params)
                except httpx.HTTPError as error:
                    response, problem = None, f"{type(error).__name__}: {error}"
            retry_after = None
            if response is not None:
                retry_after = response.headers.get("Retry-After")
                if response.status_code == 200:
                    payload, problem = _payload(response)
                    if payload is not None:
                        return payload
                elif response.status_code in (429, 500, 502, 503, 504):
                    problem = f"HTTP {response.status_code}"
                else:
                    raise ResolveError(f"{url}: HTTP {response.status_code}")
            await asyncio.sleep(self._wait(attempt, retry_after))
        raise ResolveError(f"{url}: gave up after {self.politeness.attempts} attempts ({problem})")

    async def close(self) -> None:
        await self.http.aclose()


def _payload(response: httpx.Response) -> tuple[dict | None, str]:
    """(the answer, "") or (None, why asking again may help); other API errors raise ResolveError."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return None, "an answer that is not a JSON object"
    error = payload.get("error")
    if error is None:
        return payload, ""
    code = error.get("code", "") if isinstance(error, dict) else str(error)
    if code in ("maxlag", "ratelimited"):
        return None, f"API error {code}"
    raise ResolveError(f"{response.url}: API error {code}")


def _batches(values: Sequence[str]) -> list[Sequence[str]]:
    return [values[start:start + BATCH_TITLES] for start in range(0, len(values), BATCH_TITLES)]


async def _query_pages(client: _Client, api: str, titles: Sequence[str]) -> list[tuple]:
    """(title, status, lat, lon, item) for each asked title, following continuation."""
    params = {"action": "query", "prop": "coordinates|pageprops", "ppprop": "wikibase_item", "colimit": "max",
              "coprimary": "primary", "redirects": "1", "titles": "|".join(titles)}
    renamed: dict[str, str] = {}
    pages: dict[str, dict] = {}
    while True:
        payload = await client.get(api, params)
        query = payload.get("query", {})
        for step in ("normalized", "redirects"):
            renamed.update({entry["from"]: entry["to"] for entry in query.get(step, [])})
        for page in query.get("pages", []):
            merged = pages.setdefault(page["title"], {"coordinates": [], "missing": False, "item": None})
            merged["coordinates"] += page.get("coordinates", [])
            merged["missing"] |= bool(page.get("missing") or page.get("invalid"))
            merged["item"] = page.get("pageprops", {}).get("wikibase_item", merged["item"])
        if "continue" not in payload:
            break
        params = {**params, **payload["continue"]}
    rows = []
    for title in titles:
        final = title
        while final in renamed and renamed[final] != final:
            final = renamed[final]
        page = pages.get(final)
        if page is None or page["missing"]:
            rows.append((title, MISSING_PAGE, None, None, None))
        elif page["coordinates"]:
            point = page["coordinates"][0]
            rows.append((title, RESOLVED, float(point["lat"]), float(point["lon"]), page["item"]))
        elif page["item"]:
            rows.append((title, NEEDS_ITEM, None, None, page["item"]))
        else:
            rows.append((title, NO_COORDINATES, None, None, None))
    return rows


def _coordinate_value(entity: dict) -> tuple[float, float] | None:
    for claim in entity.get("claims", {}).get(COORDINATE_PROPERTY, []):
        value = claim.get("mainsnak", {}).get("datavalue", {}).get("value")
        if isinstance(value, dict) and "latitude" in value and "longitude" in value:
            return float(value["latitude"]), float(value["longitude"])
    return None


async def _query_items(client: _Client, api: str, items: Sequence[str]) -> list[tuple]:
    """(item, status, lat, lon) from each item's coordinate location (P625)."""
    payload = await client.get(api, {"action": "wbgetentities", "props": "claims", "ids": "|".join(items)})
    entities = payload.get("entities", {})
    rows = []
    for item in items:
        entity = entities.get(item, {})
        point = None if "missing" in entity else _coordinate_value(entity)
        if "missing" in entity or not entity:
            rows.append((item, MISSING_PAGE, None, None))
        elif point is None:
            rows.append((item, NO_COORDINATES, None, None))
        else:
            rows.append((item, RESOLVED, *point))
    return rows


async def _resolve_missing(cache: Cache, titles: list[str], commons_api: str, wikidata_api: str,
                           politeness: Politeness) -> tuple[int, list[str]]:
    client = _Client(politeness)
    errors: list[str] = []

    async def run(label: str, batches: list[Sequence[str]], query, api: str, table: str) -> None:
        with progress_bar(transient=False) as progress:
            bar = progress.add_task(label, total=len(batches))

            async def one(batch: Sequence[str]) -> None:
                try:
                    cache.store(table, await query(client, api, batch))
                except ResolveError as error:
                    errors.append(str(error))
                progress.advance(bar)

            await asyncio.gather(*(one(batch) for batch in batches))

    try:
        await run("Commons categories", _batches(cache.missing("pages", "title", titles)), _query_pages,
                  commons_api, "pages")
        await run("Wikidata items", _batches(cache.pending_items()), _query_items, wikidata_api, "items")
    finally:
        await client.close()
    return client.requests, errors


def _answers(landmarks: pl.DataFrame, cache: Cache) -> pl.DataFrame:
    """landmark_id, category, lat, lon, reason (null when resolved) from the cache."""
    pages = cache.frame("pages").rename({"status": "page_status", "lat": "page_lat", "lon": "page_lon"})
    items = cache.frame("items").rename({"status": "item_status", "lat": "item_lat", "lon": "item_lon"})
    joined = (
        landmarks.join(pages, on="title", how="left", maintain_order="left")
        .join(items, on="item", how="left", maintain_order="left")
    )
    from_item = pl.col("page_status") == NEEDS_ITEM
    status = (
        pl.when(pl.col("title").is_null()).then(pl.lit(BAD_CATEGORY))
        .when(pl.col("page_status").is_null()).then(pl.lit(REQUEST_FAILED))
        .when(from_item & pl.col("item_status").is_null()).then(pl.lit(REQUEST_FAILED))
        .when(from_item).then("item_status")
        .otherwise("page_status")
    )
    frame = joined.select(
        "landmark_id", "category",
        pl.when(from_item).then("item_lat").otherwise("page_lat").alias("lat"),
        pl.when(from_item).then("item_lon").otherwise("page_lon").alias("lon"),
        status.alias("status"),
    )
    resolved = frame["status"] == RESOLVED
    reason = pl.when(~resolved).then(frame["status"]).otherwise(coordinate_reasons(frame["lat"], frame["lon"]))
    return frame.with_columns(reason.alias("reason")).drop("status")


def resolve_landmarks(categories_csv: Path, out: Path, cache_path: Path | None = None,
                      unresolved_path: Path | None = None, commons_api: str = COMMONS_API,
                      wikidata_api: str = WIKIDATA_API, politeness: Politeness | None = None) -> ResolveSummary:
    """Write `out` (landmark_id,lat,lon, resolved only) and the unresolved landmarks with their reason."""
    politeness = politeness or Politeness()
    landmarks = select_layout(read_table(categories_csv), categories_csv, CATEGORY_LAYOUTS)
    landmarks = landmarks.with_columns(category_titles(landmarks["category"]).alias("title"))
    cache_path = cache_path or out.with_suffix(".cache.sqlite")
    unresolved_path = unresolved_path or out.with_name(f"{out.stem}.unresolved.csv")
    with closing(Cache(cache_path)) as cache:
        titles = landmarks["title"].drop_nulls().unique().to_list()
        requests, errors = asyncio.run(_resolve_missing(cache, titles, commons_api, wikidata_api, politeness))
        answers = _answers(landmarks, cache)
    good = answers.filter(pl.col("reason").is_null())
    bad = answers.filter(pl.col("reason").is_not_null())
    write_table(good.select("landmark_id", "lat", "lon"), out)
    write_table(bad.select("landmark_id", "category", "reason"), unresolved_path)
    counts = dict(bad.group_by("reason").len().iter_rows())
    return ResolveSummary(good.height, counts, requests, len(errors), errors)
