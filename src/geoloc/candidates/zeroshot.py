"""Candidates from a vision-language model asked for a photo's coordinates, zero-shot.

Any OpenAI-compatible chat-completions endpoint works (vLLM, SGLang, a hosted API),
through the official `openai` client, whose retry logic already backs off on 429 (with
Retry-After), 5xx, 408 and time-outs. What is added here: the key only ever comes from
the environment and only goes where it was set for (`endpoint_key`); photos never travel
unencrypted beyond this machine unless asked; requests run with bounded concurrency; every answer is cached on disk
by photo content, endpoint, model, prompt, sampling settings and sample, so a rerun or a crash never
pays for a request twice; answers are parsed without inventing coordinates. With `rag`, G3's
geo-diversified prompt names the coordinates of the photo's retrieval and reverse neighbours.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import polars as pl
from PIL import Image

from geoloc.candidates import conform_candidates
from geoloc.candidates.coordinates import parse_coordinates
from geoloc.errors import InputError
from geoloc.images import MetadataError, Photo, strip_metadata
from geoloc.images.decoding import UNREADABLE, unreadable_reason
from geoloc.network import is_loopback
from geoloc.tables import IN_MEMORY, describe_ids, open_answer_cache
from geoloc.user_cache import user_cache_folder

API_KEY_VARIABLE = "GEOLOC_API_KEY"
"""The key for the endpoint `--base-url` names, whichever it is."""
OPENAI_KEY_VARIABLE = "OPENAI_API_KEY"
OPENAI_API_HOST = "api.openai.com"
"""OPENAI_API_KEY (and the client's other OPENAI_* settings) go to OpenAI's own API only, over https:
another server that speaks its protocol never sees them."""
OPENAI_ACCOUNT_HEADERS = ("OpenAI-Organization", "OpenAI-Project")
SENT_AS_IS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
FATAL_STATUS = {400, 401, 403, 404}
"""Answers that no retry will change: a wrong key, model name or request. The run stops."""

DEFAULT_PROMPT = (
    "You are an expert in photo geolocation. Where on Earth was this photo taken? "
    "Always give your single best guess, even when unsure. Answer only with JSON of the form "
    '{"latitude": <decimal degrees, north positive>, "longitude": <decimal degrees, east positive>}.'
)

GEORANKER_PROMPT = "\n                ".join([
    "Suppose you are an expert in geo-localization, you have the ability to give two number GPS coordination "
    "given an image.",
    "Please give me the location of the given image.",
    "Remember, you must have an answer, just output your best guess, don't answer me that you can't give a "
    "location.",
    *['Your answer should be in the following JSON format without any other information: '
      '{"latitude": float,"longitude": float}.'] * 2,
])
"""The request text of GeoRanker's lvlm_zs_predict.py, character for character (its source's line
breaks and indentation included, and its last sentence twice): the input the paper's answers came from.
It is also G3's zero-shot request (llm_predict.py's get_response), which GeoRanker's repeats."""

G3_RAG_PROMPT = "\n                ".join([
    "Suppose you are an expert in geo-localization, Please analyze this image and give me a guess of the location.",
    "Your answer must be to the coordinates level in (latitude, longitude) format.",
    "For your reference, these are coordinates of some similar images: {similar}, and these are coordinates "
    "of some dissimilar images: {dissimilar}.",
    "Remember, you must have an answer, just output your best guess, don't answer me that you can't give an "
    "location.",
    *['Your answer should be in the following JSON format without any other information: '
      '{{"latitude": float,"longitude": float}}.'] * 2,
    "",
])
"""G3's geo-diversified request (llm_predict.py's get_response_rag), character for character once
formatted: its line breaks and indentation, "an location", the last sentence twice and the
line break and indentation after it. `{similar}` and `{dissimilar}` take `coordinate_list`s."""

RAG_SOURCES = ("retrieval", "reverse")
"""The candidate sources G3's prompt names: "similar images" and "dissimilar images"."""
NO_NEIGHBOURS = "no retrieval or reverse candidates for this query_id in the neighbours table"

ZEROSHOT_SCHEMA = {
    "query_id": pl.Utf8,
    "image": pl.Utf8,
    "rag": pl.Int32,
    "sample": pl.Int32,
    "lat": pl.Float64,
    "lon": pl.Float64,
    "answer": pl.Utf8,
    "error": pl.Utf8,
    "rag_retrieval": pl.Int32,
    "rag_reverse": pl.Int32,
}
"""One row per photo, K and sample. `rag` is the K of G3's prompt (0: the plain prompt);
`rag_retrieval` and `rag_reverse` are how many neighbours of each kind the prompt named
(fewer than K when the neighbours table had fewer; null for the plain prompt)."""


class ZeroShotError(RuntimeError):
    """The run cannot go on: no key, or the endpoint refuses every request."""


@dataclass(frozen=True)
class ZeroShotSettings:
    model: str
    base_url: str
    samples: int = 5
    temperature: float = 0.7
    concurrency: int = 8
    max_tokens: int = 200
    timeout_s: float = 60.0
    max_retries: int = 6
    prompt: str = DEFAULT_PROMPT
    answers_per_request: int = 1
    """Answers asked in one request (the API's `n`): GeoRanker asks for its 10 at once."""
    detail: str | None = None
    """The image detail level sent (`low`, `high`, `auto`); None leaves it to the endpoint."""
    rag_prompt: str = G3_RAG_PROMPT
    """The request for K > 0: a template with `{similar}` and `{dissimilar}`."""
    allow_http: bool = False
    """Send photos (and the key) over plain http to a host beyond this machine."""


G3_REQUEST = {"prompt": GEORANKER_PROMPT, "temperature": 1.2, "samples": 10, "answers_per_request": 10,
              "max_tokens": 200, "detail": "low"}
PRESETS: dict[str, dict] = {"georanker": G3_REQUEST, "g3": G3_REQUEST}
"""Published request settings by name. GeoRanker's lvlm_zs_predict.py asks as G3's llm_predict.py
does (both its requests, plain and geo-diversified, take these defaults), so the two are one."""


def zeroshot_settings(model: str, base_url: str, preset: str | None, rag: Sequence[int], given: dict,
                      **fixed) -> ZeroShotSettings:
    """The request settings: the preset's (G3's by default when a RAG K is asked), then the values `given`
    (None: not given); `fixed` are the run's own (concurrency, retries, time-out)."""
    base = PRESETS[preset] if preset else PRESETS["g3"] if max(rag, default=0) > 0 else {}
    chosen = {**base, **{key: value for key, value in given.items() if value is not None}}
    return ZeroShotSettings(model=model, base_url=base_url, **fixed, **chosen)


def coordinate_list(lats: Sequence[float], lons: Sequence[float]) -> str:
    """Coordinates as G3's prompt lists them: the Python text of a list of "[lat, lon]" strings.

    G3 writes each neighbour as f"[{lat}, {lon}]" from floats (shortest round-trip digits)
    and puts `str()` of the list of those strings in the prompt.
    """
    return str([f"[{float(lat)}, {float(lon)}]" for lat, lon in zip(lats, lons, strict=True)])


class Neighbours:
    """Each query's retrieval and reverse neighbours' coordinates, in rank order, for G3's prompt."""

    def __init__(self, table: pl.DataFrame, path: Path | str, most: int) -> None:
        """Keep the first `most` neighbours of each kind per query of a candidates table."""
        table = conform_candidates(table, path).filter(pl.col("source").is_in(RAG_SOURCES))
        for source in RAG_SOURCES:
            if not (table["source"] == source).any():
                made_by = "--k" if source == "retrieval" else "--reverse K"
                raise ZeroShotError(f"{path}: no {source} candidates, which G3's prompt names "
                                    f"(`geoloc retrieve ... {made_by}` writes them)")
        twice = table.filter(table.select("query_id", "source", "rank").is_duplicated())
        if len(twice):
            raise ZeroShotError(f"{path}: {len(twice)} candidates share a (query, source, rank), for queries "
                                f"{describe_ids(twice['query_id'].unique(maintain_order=True))}: "
                                "their first K is not defined")
        grouped = table.sort("query_id", "source", "rank").group_by("query_id", "source").agg(
            pl.col("lat").head(most), pl.col("lon").head(most))
        self.path = path
        self.query_ids = grouped["query_id"].unique(maintain_order=True)
        self._by_query: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
        for query_id, source, lats, lons in grouped.iter_rows():
            self._by_query.setdefault(query_id, {})[source] = (lats, lons)

    def __contains__(self, query_id: str) -> bool:
        return query_id in self._by_query

    def first(self, query_id: str, k: int, source: str) -> tuple[list[float], list[float]]:
        """The first `k` (or fewer, when the table has fewer) neighbours' latitudes and longitudes."""
        lats, lons = self._by_query.get(query_id, {}).get(source, ([], []))
        return lats[:k], lons[:k]


def endpoint_key(base_url: str, allow_http: bool = False, environ: Mapping[str, str] = os.environ) -> str | None:
    """The key to send to `base_url` (None: send none), once the URL is one photos may go to.

    GEOLOC_API_KEY is set for whatever endpoint geoloc is pointed at; OPENAI_API_KEY was set for
    OpenAI and goes to https://api.openai.com only. Another endpoint without GEOLOC_API_KEY gets
    no key (a local server needs none; one that does answers 401 and the run stops). Plain http
    is refused beyond loopback unless `allow_http`: photos and key would cross the network in clear.
    """
    parts = urlsplit(base_url.strip())
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise ZeroShotError(f"--base-url {base_url!r}: not an http(s) URL")
    if parts.scheme == "http" and not is_loopback(host) and not allow_http:
        raise ZeroShotError(f"--base-url {base_url}: plain http to {host} would send every photo (and any key) "
                            "unencrypted across the network; use https, or pass --allow-http if you mean it")
    key = environ.get(API_KEY_VARIABLE, "").strip()
    if key or not _is_openai(base_url):
        return key or None
    key = environ.get(OPENAI_KEY_VARIABLE, "").strip()
    if not key:
        raise ZeroShotError(
            f"no API key for {OPENAI_API_HOST}: set {API_KEY_VARIABLE} or {OPENAI_KEY_VARIABLE} in the environment "
            "(keys are not accepted as flags: other users of the machine can read command lines)")
    return key


def _is_openai(base_url: str) -> bool:
    parts = urlsplit(base_url.strip())
    return parts.scheme == "https" and parts.hostname == OPENAI_API_HOST


def _withheld_headers(base_url: str, key: str | None) -> dict:
    """Headers the openai client would add from OPENAI_* variables, removed where they were not set for."""
    import openai

    withheld = {} if _is_openai(base_url) else dict.fromkeys(OPENAI_ACCOUNT_HEADERS, openai.Omit())
    return withheld | ({} if key else {"Authorization": openai.Omit()})


def image_data_url(data: bytes) -> str:
    """The photo as a data: URL without its metadata (EXIF GPS would hand the endpoint the answer).

    Formats that chat APIs do not take are re-encoded as JPEG, which carries no metadata over.
    """
    with Image.open(io.BytesIO(data)) as image:
        mime = SENT_AS_IS.get(image.format or "")
        if mime is None:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=95)
            data, mime = buffer.getvalue(), "image/jpeg"
        else:
            data = strip_metadata(data)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


MEMORY_ONLY = Path(IN_MEMORY)
"""An answer cache that lives only as long as one run (SQLite in memory): the web app writes nothing."""


class AnswerCache:
    """Answers on disk (SQLite), keyed by everything that shapes them. Errors are not cached."""

    def __init__(self, path: Path) -> None:
        self._db = open_answer_cache(
            path, "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)"
        )

    KEY_VERSION = 3
    """Bumped whenever what the key covers changes: older entries then simply miss."""

    @staticmethod
    def key(photo_sha256: str, settings: ZeroShotSettings, sample: int, prompt: str | None = None,
            rag: int = 0) -> str:
        """Every input that can change an answer: the same model name on two endpoints is two models.

        `prompt` is the text sent (default: the plain one); a RAG prompt holds the neighbours'
        coordinates, so other neighbours are another key. K is covered too: a photo with fewer
        neighbours than K asks K=10's question in K=5's words, yet its K=10 answers are samples of
        their own. The version stands for how photos are encoded before sending. How many answers
        one request asks for is left out: each is an independent sample at the same settings.
        """
        parts = {
            "version": AnswerCache.KEY_VERSION,
            "photo": photo_sha256,
            "endpoint": normalized_base_url(settings.base_url),
            "model": settings.model,
            "prompt": settings.prompt if prompt is None else prompt,
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            "detail": settings.detail,
            "sample": sample,
            **({"rag": rag} if rag else {}),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, answer: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?)", (key, answer))
        self._db.commit()

    def close(self) -> None:
        self._db.close()


def normalized_base_url(base_url: str) -> str:
    """One spelling per endpoint: scheme and host are case-insensitive, a trailing slash means nothing."""
    parts = urlsplit(base_url.strip())
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), parts.query, ""))


def default_cache_path() -> Path:
    return user_cache_folder() / "zeroshot.sqlite"


@dataclass(frozen=True)
class _Question:
    """What one photo is asked at one K: the prompt sent and the neighbours it names."""

    photo: Photo
    rag: int
    prompt: str
    named: tuple[int, int] | None = None
    """Retrieval and reverse neighbours the prompt names; None for the plain prompt."""


async def _ask(client, settings: ZeroShotSettings, prompt: str, data_url: str, count: int,
               headers: dict) -> list[str]:
    """`count` answers from one request; fewer when the endpoint returns fewer choices."""
    import openai

    image_url = {"url": data_url} if settings.detail is None else {"url": data_url, "detail": settings.detail}
    try:
        response = await client.chat.completions.create(
            model=settings.model,
            messages=[{
                "role": "user",
                "content": [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": image_url}],
            }],
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            extra_headers=headers,
            **({"n": count} if count > 1 else {}),
        )
    except openai.APIStatusError as error:
        if error.status_code in FATAL_STATUS:
            hint = (f" (the key comes from {API_KEY_VARIABLE}; {OPENAI_KEY_VARIABLE} only for {OPENAI_API_HOST})"
                    if error.status_code == 401 else "")
            raise ZeroShotError(f"the endpoint refused the request ({error.status_code}): {error.message}{hint}"
                                ) from error
        raise
    choices = sorted(response.choices or [], key=lambda choice: choice.index)[:count]
    return [choice.message.content or "" for choice in choices]


def _questions(photo: Photo, settings: ZeroShotSettings, rag: Sequence[int],
               neighbours: Neighbours | None) -> list[_Question | str]:
    """Per K, the question for this photo, or why it cannot be asked (no neighbours in the table)."""
    questions: list[_Question | str] = []
    for k in rag:
        if k == 0:
            questions.append(_Question(photo, 0, settings.prompt))
        elif neighbours is None or photo.query_id not in neighbours:
            questions.append(NO_NEIGHBOURS)
        else:
            similar, dissimilar = (neighbours.first(photo.query_id, k, source) for source in RAG_SOURCES)
            prompt = settings.rag_prompt.format(similar=coordinate_list(*similar),
                                                dissimilar=coordinate_list(*dissimilar))
            questions.append(_Question(photo, k, prompt, (len(similar[0]), len(dissimilar[0]))))
    return questions


_Request = tuple[_Question, list[int], list[str]]
"""A request to send: a question with the samples (and their cache keys) one request answers."""


def _plan(photos: list[Photo], settings: ZeroShotSettings, rag: Sequence[int], neighbours: Neighbours | None,
          cache: AnswerCache, on_progress: Callable[[int], None]) -> tuple[list[dict], list[_Request]]:
    """The rows known without asking (cached answers, unreadable photos, questions that cannot be asked)
    and the requests still to send."""
    rows: list[dict] = []
    pending: list[_Request] = []
    for photo in photos:
        questions = _questions(photo, settings, rag, neighbours)
        try:
            data = photo.read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
        except UNREADABLE as error:
            reason = f"unreadable image: {unreadable_reason(error)}"
            rows += [_row(_Question(photo, k, ""), sample, None, reason)
                     for k in rag for sample in range(settings.samples)]
            on_progress(settings.samples * len(rag))
            continue
        digest = hashlib.sha256(data).hexdigest()
        for k, question in zip(rag, questions):
            if isinstance(question, str):
                rows += [_row(_Question(photo, k, "", (0, 0)), sample, None, question)
                         for sample in range(settings.samples)]
                on_progress(settings.samples)
                continue
            missing: list[tuple[int, str]] = []
            for sample in range(settings.samples):
                key = AnswerCache.key(digest, settings, sample, question.prompt, question.rag)
                cached = cache.get(key)
                if cached is None:
                    missing.append((sample, key))
                else:
                    rows.append(_row(question, sample, cached, None))
                    on_progress(1)
            for start in range(0, len(missing), settings.answers_per_request):
                samples, keys = zip(*missing[start:start + settings.answers_per_request], strict=True)
                pending.append((question, list(samples), list(keys)))
    return rows, pending


async def _send(pending: list[_Request], settings: ZeroShotSettings, cache: AnswerCache, api_key: str | None,
                on_progress: Callable[[int], None]) -> list[dict]:
    """The rows of every request, sent with bounded concurrency; answers are cached as they come."""
    import openai

    limit = asyncio.Semaphore(settings.concurrency)
    # The client wants a key even when none is sent: the placeholder never leaves (Authorization is withheld).
    client = openai.AsyncOpenAI(api_key=api_key or "none", base_url=settings.base_url, timeout=settings.timeout_s,
                                max_retries=settings.max_retries)
    headers = _withheld_headers(settings.base_url, api_key)

    async def ask(question: _Question, samples: list[int], keys: list[str]) -> list[dict]:
        async with limit:
            try:
                # Encoded only while in flight: a whole benchmark's data URLs would fill memory.
                data_url = image_data_url(question.photo.read_bytes())
                answers = await _ask(client, settings, question.prompt, data_url, len(samples), headers)
            except (openai.APIStatusError, openai.APIConnectionError) as error:
                failure = f"request failed after retries: {error.__class__.__name__}"
                return [_row(question, sample, None, failure) for sample in samples]
            except (OSError, MetadataError) as error:
                return [_row(question, sample, None, f"unreadable image: {error}") for sample in samples]
            finally:
                on_progress(len(samples))
        for key, answer in zip(keys, answers):
            cache.put(key, answer)
        short = f"the endpoint returned {len(answers)} of the {len(samples)} answers asked in one request"
        return [_row(question, sample, answer, None) for sample, answer in zip(samples, answers)] + [
            _row(question, sample, None, short) for sample in samples[len(answers):]
        ]

    rows: list[dict] = []
    async with client:
        tasks = [asyncio.ensure_future(ask(*item)) for item in pending]
        try:
            for answered in await asyncio.gather(*tasks):
                rows += answered
        except ZeroShotError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
    return rows


async def _run(
    photos: list[Photo],
    settings: ZeroShotSettings,
    rag: Sequence[int],
    neighbours: Neighbours | None,
    cache: AnswerCache,
    api_key: str | None,
    on_progress: Callable[[int], None],
) -> tuple[list[dict], int]:
    """Every row, and how many requests were sent."""
    rows, pending = _plan(photos, settings, rag, neighbours, cache, on_progress)
    return rows + await _send(pending, settings, cache, api_key, on_progress), len(pending)


def _row(question: _Question, sample: int, answer: str | None, failure: str | None) -> dict:
    parsed = parse_coordinates(answer) if failure is None else None
    named = question.named or (None, None)
    return {
        "query_id": question.photo.query_id,
        "image": str(question.photo.path),
        "rag": question.rag,
        "sample": sample,
        "lat": parsed.lat if parsed else None,
        "lon": parsed.lon if parsed else None,
        "answer": answer,
        "error": failure if failure is not None else parsed.error,
        "rag_retrieval": named[0],
        "rag_reverse": named[1],
    }


@dataclass(frozen=True)
class ZeroShotResult:
    table: pl.DataFrame
    requests: int
    """Requests sent this run (answers already cached cost none)."""


def ask_zeroshot(
    photos: list[Photo],
    settings: ZeroShotSettings,
    cache_path: Path,
    on_progress: Callable[[int], None] = lambda done: None,
    rag: Sequence[int] = (0,),
    neighbours: Neighbours | None = None,
) -> ZeroShotResult:
    """Ask the model `settings.samples` times about each photo at each K of `rag`; one row per photo, K, sample.

    K = 0 asks the plain prompt; K > 0 G3's, naming the first K of the photo's retrieval and
    reverse `neighbours`. A photo the neighbours table does not know gets rows with the reason
    in `error` and costs no request.
    """
    if settings.samples < 1 or settings.concurrency < 1 or settings.answers_per_request < 1:
        raise InputError("samples, answers per request and concurrency must be at least 1")
    rag = sorted(set(rag))
    if not rag or rag[0] < 0:
        raise InputError("rag needs at least one K, none below 0 (0 = the plain prompt)")
    if rag[-1] > 0 and neighbours is None:
        raise InputError("a RAG prompt (K > 0) needs the photos' neighbours")
    if rag[-1] > 0 and photos and not any(photo.query_id in neighbours for photo in photos):
        raise ZeroShotError(
            f"{neighbours.path} names none of these {len(photos)} photos (its queries: "
            f"{describe_ids(neighbours.query_ids)}; the photos': "
            f"{describe_ids(pl.Series([photo.query_id for photo in photos]))}): give `geoloc retrieve` and "
            "this command the same photos or folder, whose relative paths are the query ids")
    api_key = endpoint_key(settings.base_url, settings.allow_http)
    cache = AnswerCache(cache_path)
    try:
        rows, requests = asyncio.run(_run(photos, settings, rag, neighbours, cache, api_key, on_progress))
    finally:
        cache.close()
    table = pl.DataFrame(rows, schema=ZEROSHOT_SCHEMA).sort("query_id", "rag", "sample")
    return ZeroShotResult(table=table, requests=requests)
