"""The web app: drop a photo, see where it was taken on a map.

Built to stay up: the model loads once, in the background (`/api/health` says 503
until it is ready); decoding, EXIF reading and inference run off the event loop
(inference one photo at a time), behind a bounded queue that answers 503 with
Retry-After when full. Uploads arrive in slots of their own, before the queue: one not
complete within its time limit gets 408 and frees its slot, and a stalled client never
holds a place in the inference queue, so it keeps no good photo waiting; uploads are capped
in bytes (413) and in pixels (decompression bombs get 413 before any pixel is decoded);
anything that is not a decodable image gets 422 with a readable message. Photos stay in
memory (the whole request body is capped below the multipart parser's in-memory spool, so
no upload byte ever reaches the disk, not even one refused for its size) and no log line
carries coordinates. With a token, every API call needs it as a bearer token. Every request
must name the server by one of its names (loopback ones, plus `allowed_hosts`) in `Host`
and, when a browser sends one, in `Origin`: another web site cannot post photos to it, nor
read its answers by pointing its own name at 127.0.0.1 (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.formparsers import MultiPartException, MultiPartParser

from geoloc.geo import drawable_region
from geoloc.images.decoding import UNREADABLE, decode_photo
from geoloc.network import is_loopback
from geoloc.predict import LoadedPhoto, PhotoGuess, Unreadable, exif_position
from geoloc.recipe.engine import RecipeAnswer

log = logging.getLogger("geoloc.serve")
MULTIPART_ALLOWANCE = 64 * 1024
"""Bytes a request may carry beyond its photo: the multipart boundaries and part headers."""
DEFAULT_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"


@dataclass(frozen=True)
class ServeSettings:
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 50_000_000
    max_queue: int = 8
    """Received photos waiting for, or in, inference; beyond, 503."""
    max_uploads: int = 32
    """Uploads being received at once (each bounded by upload_timeout_s and max_upload_bytes); beyond, 503."""
    retry_after_s: int = 5
    upload_timeout_s: float = 30.0
    """Seconds from the request's headers to the last byte of its photo; beyond, 408."""
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    """Names (or addresses) this server answers to besides the loopback ones, in `Host` and `Origin`."""
    tiles: str | None = DEFAULT_TILES
    tiles_attribution: str = "© OpenStreetMap contributors"
    sources: tuple[str, ...] = ()
    """A recipe's candidate sources, shown on the page (none: GeoCLIP alone)."""
    photo_leaves_for: tuple[str, ...] = ()
    """Endpoints a recipe sends each photo to (its zero-shot source): the page says so."""


Guesser = Callable[[list[LoadedPhoto]], list[PhotoGuess | RecipeAnswer | Unreadable]]
"""Decoded photos in, answers out: the model behind the app (GeoCLIP by default, or a recipe's engine)."""


def _host_name(authority: str) -> str | None:
    """The host of a `Host` header or of an origin's authority, without port or IPv6 brackets."""
    try:
        return urlsplit(f"//{authority}").hostname
    except ValueError:
        return None


def _refused_origin(request: Request, allowed: frozenset[str]) -> str | None:
    """Why the request does not come from a page of this server, or None when it does."""
    host = _host_name(request.headers.get("host", ""))
    if host is None or not (is_loopback(host) or host in allowed):
        return (f"this server does not answer to the name {host or '(none)'!r} in Host; start it with "
                "--allowed-host NAME to add a name")
    origin = request.headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        name = _host_name(parts.netloc) if parts.scheme in ("http", "https") else None
        if name is None or not (is_loopback(name) or name in allowed):
            return f"cross-origin request from {origin!r} refused"
    return None


class _TooLarge(Exception):
    pass


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser, with a spool larger than any accepted upload: never on disk."""

    def __init__(self, *args, spool_bytes: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.spool_max_size = spool_bytes


class _Slots:
    """At most `capacity` holders at once; beyond, refused at once rather than waited for, so a flood
    is turned away cheaply."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.taken = 0

    @contextmanager
    def admission(self) -> Iterator[bool]:
        admitted = self.taken < self.capacity
        self.taken += admitted
        try:
            yield admitted
        finally:
            self.taken -= admitted


class _InferenceQueue(_Slots):
    """One inference at a time in a worker thread; at most `capacity` received photos admitted at once."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.limiter = anyio.CapacityLimiter(1)

    async def run(self, function, *args):
        return await anyio.to_thread.run_sync(function, *args, limiter=self.limiter)


def _problem(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _dropped(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """An answer before the upload's end: the connection is closed, its unread bytes are not waited for."""
    return _problem(status, message, (headers or {}) | {"Connection": "close"})


def _bearer_matches(authorization: str, token: str) -> bool:
    """`Bearer <token>`, the scheme in any case (RFC 9110 makes it case-insensitive)."""
    scheme, _, supplied = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), token.encode())


def _decode_upload(photo: bytes, max_pixels: int) -> tuple[Image.Image, dict | None]:
    """Pixels and EXIF position of an upload: run in a worker thread, a 50-megapixel decode takes a while."""
    return decode_photo(photo, max_pixels), exif_position(photo)


async def _read_photo(request: Request, settings: ServeSettings) -> bytes:
    """The `photo` field of a multipart upload, refusing more than max_upload_bytes as it streams in.

    The body is cut off before it exceeds the parser's spool: a file part can never hold more
    than the body, so it never rolls over to a temporary file on disk.
    """
    most = settings.max_upload_bytes + MULTIPART_ALLOWANCE
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > most:
        raise _TooLarge

    async def limited() -> AsyncIterator[bytes]:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > most:
                raise _TooLarge
            yield chunk

    parser = _InMemoryParser(request.headers, limited(), max_files=1, max_fields=4, spool_bytes=most)
    form = await parser.parse()
    upload = form.get("photo")
    if upload is None or isinstance(upload, str):
        raise MultiPartException("send the photo as a multipart file field named 'photo'")
    data = await upload.read()
    if len(data) > settings.max_upload_bytes:
        raise _TooLarge
    return data


async def _receive_upload(request: Request, settings: ServeSettings, uploads: _Slots) -> bytes | Response:
    """The uploaded photo's bytes, or the response that refuses it (too many uploads, too slow, too large)."""
    with uploads.admission() as receiving:
        if not receiving:
            return _dropped(503, "busy: too many uploads arriving; try again shortly",
                            {"Retry-After": str(settings.retry_after_s)})
        try:
            with anyio.fail_after(settings.upload_timeout_s):
                return await _read_photo(request, settings)
        except TimeoutError:
            return _dropped(408, f"the upload did not arrive within {settings.upload_timeout_s:g} s")
        except _TooLarge:
            return _dropped(413, f"the upload is larger than {settings.max_upload_bytes / 2**20:g} MB")
        except MultiPartException as error:
            return _problem(400, f"not a photo upload: {error.message}")


async def _guess_upload(photo: bytes, guesser: Guesser, settings: ServeSettings, queue: _InferenceQueue) -> Response:
    """The answer for an uploaded photo, once a place in the inference queue is free; or why there is none."""
    with queue.admission() as admitted:
        if not admitted:
            return _problem(503, "busy: too many photos waiting; try again shortly",
                            {"Retry-After": str(settings.retry_after_s)})
        try:
            image, exif = await anyio.to_thread.run_sync(_decode_upload, photo, settings.max_pixels)
        except Image.DecompressionBombError as error:
            return _problem(413, f"the image is too large to decode: {error}")
        except UNREADABLE as error:
            return _problem(422, f"not a decodable image ({error.__class__.__name__}); send a JPEG, PNG, "
                                 "WebP, HEIC or TIFF photo")
        guesses = await queue.run(guesser, [LoadedPhoto("upload", "upload", image, exif, photo)])
    guess = guesses[0]
    if isinstance(guess, Unreadable):
        return _problem(422, guess.reason)
    return JSONResponse(guess.as_json() | drawable_region(guess.lat, guess.lon, guess.radius_km))


def create_app(load_guesser: Callable[[], Guesser], settings: ServeSettings | None = None) -> FastAPI:
    """The app; `load_guesser` runs once, in a worker thread, when the server starts."""
    settings = settings or ServeSettings()
    state: dict[str, Guesser | str | None] = {"guesser": None, "failure": None}
    queue = _InferenceQueue(settings.max_queue)
    uploads = _Slots(settings.max_uploads)

    async def load() -> None:
        try:
            state["guesser"] = await anyio.to_thread.run_sync(load_guesser)
            log.info("model loaded")
        except Exception as error:  # noqa: BLE001 - reported by /api/health, the server stays up
            state["failure"] = f"{error.__class__.__name__}: {error}"
            log.error("the model could not be loaded: %s", state["failure"])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(load())
        yield
        task.cancel()

    app = FastAPI(title="geoloc", lifespan=lifespan, docs_url=None, redoc_url=None)
    static = resources.files("geoloc.serve").joinpath("static")
    data = resources.files("geoloc").joinpath("data")

    allowed_hosts = frozenset(name.lower().strip("[]") for name in settings.allowed_hosts)

    @app.middleware("http")
    async def require_own_origin_and_token(request: Request, call_next):
        refusal = _refused_origin(request, allowed_hosts)
        if refusal is not None:
            return _problem(403, refusal)
        if settings.token and request.url.path.startswith("/api/"):
            if not _bearer_matches(request.headers.get("authorization", ""), settings.token):
                return _problem(401, "this server needs its token: Authorization: Bearer <token>",
                                {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(static.joinpath("index.html")))

    @app.get("/static/world.geojson", include_in_schema=False)
    async def world() -> FileResponse:
        return FileResponse(str(data.joinpath("world_110m.geojson")), media_type="application/geo+json")

    @app.get("/api/config")
    async def config() -> dict:
        return {"tiles": settings.tiles, "attribution": settings.tiles_attribution,
                "max_upload_bytes": settings.max_upload_bytes, "sources": list(settings.sources),
                "photo_leaves_for": list(settings.photo_leaves_for)}

    @app.get("/api/health")
    async def health() -> Response:
        if state["guesser"] is not None:
            return JSONResponse({"status": "ok"})
        if state["failure"] is not None:
            return _problem(503, f"the model could not be loaded: {state['failure']}")
        return _problem(503, "the model is loading", {"Retry-After": str(settings.retry_after_s)})

    @app.post("/api/predict")
    async def predict(request: Request) -> Response:
        guesser = state["guesser"]
        if guesser is None:
            return _problem(503, "the model is not ready yet", {"Retry-After": str(settings.retry_after_s)})
        photo = await _receive_upload(request, settings, uploads)
        if isinstance(photo, Response):
            return photo
        return await _guess_upload(photo, guesser, settings, queue)

    # Mounted last: the routes above take precedence over the static folders.
    app.mount("/static/vendor/leaflet", StaticFiles(directory=str(data.joinpath("leaflet"))), name="leaflet")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app
