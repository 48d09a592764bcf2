"""Candidates from a vision-language model asked for a photo's coordinates, zero-shot.

Any OpenAI-compatible chat-completions endpoint works (vLLM, SGLang, a hosted API),
through the official `openai` client, whose retry logic already backs off on 429 (with
Retry-After), 5xx, 408 and time-outs. What is added here: the key only ever comes from
the environment; requests run with bounded concurrency; every answer is cached on disk
by photo content, endpoint, model, prompt, sampling settings and sample, so a rerun or a crash never
pays for a request twice; answers are parsed without inventing coordinates.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import polars as pl
from PIL import Image, UnidentifiedImageError

from geoloc.candidates.coordinates import parse_coordinates
from geoloc.images import MetadataError, Photo, strip_metadata
from geoloc.tables import open_answer_cache

API_KEY_VARIABLES = ("GEOLOC_API_KEY", "OPENAI_API_KEY")
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
breaks and indentation included, and its last sentence twice): the input the paper's answers came from."""

ZEROSHOT_SCHEMA = {
    "query_id": pl.Utf8,
    "image": pl.Utf8,
    "sample": pl.Int32,
    "lat": pl.Float64,
    "lon": pl.Float64,
    "answer": pl.Utf8,
    "error": pl.Utf8,
}


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


PRESETS: dict[str, dict] = {
    "georanker": {"prompt": GEORANKER_PROMPT, "temperature": 1.2, "samples": 10, "answers_per_request": 10,
                  "max_tokens": 200, "detail": "low"},
}
"""Published request settings by name: GeoRanker's for new photos (lvlm_zs_predict.py)."""


def api_key_from_environment() -> str:
    """The API key from GEOLOC_API_KEY, else OPENAI_API_KEY; never from a flag or a file."""
    for variable in API_KEY_VARIABLES:
        key = os.environ.get(variable, "").strip()
        if key:
            return key
    raise ZeroShotError(
        f"no API key: set {' or '.join(API_KEY_VARIABLES)} in the environment "
        "(keys are not accepted as flags: other users of the machine can read command lines)"
    )


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


class AnswerCache:
    """Answers on disk (SQLite), keyed by everything that shapes them. Errors are not cached."""

    def __init__(self, path: Path) -> None:
        self._db = open_answer_cache(
            path, "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)"
        )

    KEY_VERSION = 3
    """Bumped whenever what the key covers changes: older entries then simply miss."""

    @staticmethod
    def key(photo_sha256: str, settings: ZeroShotSettings, sample: int) -> str:
        """Every input that can change an answer: the same model name on two endpoints is two models.

        The version stands for how photos are encoded before sending. How many answers one
        request asks for is left out: each is an independent sample at the same settings.
        """
        parts = {
            "version": AnswerCache.KEY_VERSION,
            "photo": photo_sha256,
            "endpoint": normalized_base_url(settings.base_url),
            "model": settings.model,
            "prompt": settings.prompt,
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            "detail": settings.detail,
            "sample": sample,
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
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "geoloc" / "zeroshot.sqlite"


async def _ask(client, settings: ZeroShotSettings, data_url: str, count: int) -> list[str]:
    """`count` answers from one request; fewer when the endpoint returns fewer choices."""
    import openai

    image_url = {"url": data_url} if settings.detail is None else {"url": data_url, "detail": settings.detail}
    try:
        response = await client.chat.completions.create(
            model=settings.model,
            messages=[{
                "role": "user",
                "content": [{"type": "text", "text": settings.prompt}, {"type": "image_url", "image_url": image_url}],
            }],
            temperature=settings.temperature,
            max_tokens=settings.max_tokens,
            **({"n": count} if count > 1 else {}),
        )
    except openai.APIStatusError as error:
        if error.status_code in FATAL_STATUS:
            raise ZeroShotError(f"the endpoint refused the request ({error.status_code}): {error.message}") from error
        raise
    choices = sorted(response.choices or [], key=lambda choice: choice.index)[:count]
    return [choice.message.content or "" for choice in choices]


async def _run(
    photos: list[Photo],
    settings: ZeroShotSettings,
    cache: AnswerCache,
    api_key: str,
    on_progress: Callable[[int], None],
) -> tuple[list[dict], int]:
    import openai

    rows: list[dict] = []
    pending: list[tuple[Photo, list[int], list[str]]] = []
    """Requests to send: a photo with the samples (and their cache keys) one request answers."""
    for photo in photos:
        try:
            data = photo.path.read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
        except (OSError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            reason = f"unreadable image: {error.__class__.__name__}: {error}"
            rows += [_row(photo, sample, None, reason) for sample in range(settings.samples)]
            on_progress(settings.samples)
            continue
        digest = hashlib.sha256(data).hexdigest()
        missing: list[tuple[int, str]] = []
        for sample in range(settings.samples):
            key = AnswerCache.key(digest, settings, sample)
            cached = cache.get(key)
            if cached is None:
                missing.append((sample, key))
            else:
                rows.append(_row(photo, sample, cached, None))
                on_progress(1)
        for start in range(0, len(missing), settings.answers_per_request):
            samples, keys = zip(*missing[start:start + settings.answers_per_request], strict=True)
            pending.append((photo, list(samples), list(keys)))

    limit = asyncio.Semaphore(settings.concurrency)
    client = openai.AsyncOpenAI(
        api_key=api_key, base_url=settings.base_url, timeout=settings.timeout_s, max_retries=settings.max_retries
    )

    async def ask(photo: Photo, samples: list[int], keys: list[str]) -> list[dict]:
        async with limit:
            try:
                # Encoded only while in flight: a whole benchmark's data URLs would fill memory.
                answers = await _ask(client, settings, image_data_url(photo.path.read_bytes()), len(samples))
            except (openai.APIStatusError, openai.APIConnectionError) as error:
                failure = f"request failed after retries: {error.__class__.__name__}"
                return [_row(photo, sample, None, failure) for sample in samples]
            except (OSError, MetadataError) as error:
                return [_row(photo, sample, None, f"unreadable image: {error}") for sample in samples]
            finally:
                on_progress(len(samples))
        for key, answer in zip(keys, answers):
            cache.put(key, answer)
        short = f"the endpoint returned {len(answers)} of the {len(samples)} answers asked in one request"
        return [_row(photo, sample, answer, None) for sample, answer in zip(samples, answers)] + [
            _row(photo, sample, None, short) for sample in samples[len(answers):]
        ]

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
    return rows, len(pending)


def _row(photo: Photo, sample: int, answer: str | None, failure: str | None) -> dict:
    parsed = parse_coordinates(answer) if failure is None else None
    return {
        "query_id": photo.query_id,
        "image": str(photo.path),
        "sample": sample,
        "lat": parsed.lat if parsed else None,
        "lon": parsed.lon if parsed else None,
        "answer": answer,
        "error": failure if failure is not None else parsed.error,
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
) -> ZeroShotResult:
    """Ask the model `settings.samples` times about each photo; one row per photo and sample."""
    if settings.samples < 1 or settings.concurrency < 1 or settings.answers_per_request < 1:
        raise ValueError("samples, answers per request and concurrency must be at least 1")
    api_key = api_key_from_environment()
    cache = AnswerCache(cache_path)
    try:
        rows, requests = asyncio.run(_run(photos, settings, cache, api_key, on_progress))
    finally:
        cache.close()
    table = pl.DataFrame(rows, schema=ZEROSHOT_SCHEMA).sort("query_id", "sample")
    return ZeroShotResult(table=table, requests=requests)
