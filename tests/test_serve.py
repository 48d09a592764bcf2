"""`geoloc serve`: the API through FastAPI's test client, the page in a real headless Chromium."""

import http.client
import io
import json
import os
import select
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import starlette.formparsers
from datawriters import gps_block, image_bytes
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from geoloc import serve as serve_module
from geoloc.candidates import geoclip as geoclip_module
from geoloc.candidates.geoclip import GeoClip, geoclip_gallery
from geoloc.cli import app as cli
from geoloc.encode.loading import load_backbone
from geoloc.geo import drawable_region
from geoloc.predict import guess_images
from geoloc.serve import ServeSettings, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def guesser(tiny_clip, tmp_path_factory):
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    geoclip = GeoClip(load_backbone(str(tiny_clip), device="cpu"), gallery=geoclip_gallery()[::100])
    return lambda photos: guess_images(photos, geoclip, 3)


def local_client(app) -> TestClient:
    """A test client that names the server as a browser on this machine does (Host: 127.0.0.1:8000)."""
    return TestClient(app, base_url="http://127.0.0.1:8000")


def ready_client(app) -> TestClient:
    client = local_client(app)
    client.__enter__()
    deadline = time.monotonic() + 30
    while client.get("/api/health").status_code != 200:
        assert time.monotonic() < deadline, "the model never became ready"
        time.sleep(0.05)
    return client


@pytest.fixture
def client(guesser):
    client = ready_client(create_app(lambda: guesser, ServeSettings(tiles=None)))
    yield client
    client.__exit__(None, None, None)


def jpeg(size=(96, 64), gps=None) -> bytes:
    pixels = (np.random.default_rng(1).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    exif = Image.Exif()
    if gps:
        exif[0x8825] = gps
    Image.fromarray(pixels).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def test_health_waits_for_the_model_and_a_photo_gets_the_predict_json(guesser, caplog):
    loaded = threading.Event()

    def slow_load():
        loaded.wait(10)
        return guesser

    with local_client(create_app(slow_load, ServeSettings(tiles=None))) as client:
        waiting = client.get("/api/health")
        assert waiting.status_code == 503 and waiting.headers["Retry-After"]
        assert client.post("/api/predict", files={"photo": ("a.jpg", jpeg())}).status_code == 503
        loaded.set()
        deadline = time.monotonic() + 10
        while client.get("/api/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with caplog.at_level("DEBUG"):
            response = client.post("/api/predict", files={"photo": ("a.jpg", jpeg(gps=gps_block(-33.5, 151.25)))})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"image", "lat", "lon", "place", "radius_km", "candidates", "exif", "at_sea", "region",
                           "region_bounds"}
    assert len(answer["candidates"]) == 3 and answer["exif"] == pytest.approx({"lat": -33.5, "lon": 151.25})
    # No log line carries the coordinates.
    assert f"{answer['lat']:.2f}" not in caplog.text and "151.25" not in caplog.text


def test_the_page_and_its_bundled_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text and "http" not in page.text.split("<body>")[1]
    assert client.get("/static/vendor/leaflet/leaflet.js").status_code == 200
    assert client.get("/static/world.geojson").json()["type"] == "FeatureCollection"
    assert client.get("/api/config").json()["tiles"] is None


def bomb_png() -> bytes:
    """A small file that claims 8000 x 8000 pixels."""
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "send, status, message",
    [
        (lambda c: c.post("/api/predict", content=b"just bytes", headers={"content-type": "image/jpeg"}), 400,
         "not a photo upload"),
        (lambda c: c.post("/api/predict", files={"picture": ("a.jpg", jpeg())}), 400, "field named 'photo'"),
        (lambda c: c.post("/api/predict", files={"photo": ("a.txt", b"hello, I am text")}), 422,
         "not a decodable image"),
        (lambda c: c.post("/api/predict", files={"photo": ("a.jpg", jpeg()[:300])}), 422, "not a decodable image"),
        (lambda c: c.post("/api/predict", files={"photo": ("big.jpg", b"\xff" * (21 * 2**20))}), 413,
         "larger than 20 MB"),
        (lambda c: c.post("/api/predict", files={"photo": ("bomb.png", bomb_png())}), 413, "too large to decode"),
    ],
)
def test_bad_uploads_get_clean_errors_and_the_server_stays_up(client, send, status, message):
    response = send(client)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert client.post("/api/predict", files={"photo": ("ok.jpg", jpeg())}).status_code == 200


def test_uploads_never_touch_the_disk(client, monkeypatch):
    def forbidden(self):
        raise AssertionError("an upload was spooled to disk")

    monkeypatch.setattr(starlette.formparsers.SpooledTemporaryFile, "rollover", forbidden)
    big = jpeg(size=(2400, 1600))
    assert len(big) > 2**20  # beyond Starlette's default in-memory spool
    assert client.post("/api/predict", files={"photo": ("big.jpg", big)}).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(guesser):
    release, started = threading.Event(), threading.Event()

    def blocking(photos):
        started.set()
        release.wait(10)
        return guesser(photos)

    client = ready_client(create_app(lambda: blocking, ServeSettings(tiles=None, max_queue=1)))
    try:
        first = {}
        worker = threading.Thread(target=lambda: first.update(
            response=client.post("/api/predict", files={"photo": ("a.jpg", jpeg())})))
        worker.start()
        assert started.wait(10)
        busy = client.post("/api/predict", files={"photo": ("b.jpg", jpeg())})
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "5"
        release.set()
        worker.join(10)
        assert first["response"].status_code == 200
        assert client.post("/api/predict", files={"photo": ("c.jpg", jpeg())}).status_code == 200
    finally:
        release.set()
        client.__exit__(None, None, None)


def test_a_token_guards_every_api_call(guesser):
    client = local_client(create_app(lambda: guesser, ServeSettings(tiles=None, token="s3cret")))
    with client:
        assert client.get("/api/health").status_code == 401
        assert client.post("/api/predict", files={"photo": ("a.jpg", jpeg())}).status_code == 401
        wrong = client.get("/api/health", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        assert client.get("/").status_code == 200
        headers = {"Authorization": "Bearer s3cret"}
        deadline = time.monotonic() + 30
        while client.get("/api/health", headers=headers).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ok = client.post("/api/predict", files={"photo": ("a.jpg", jpeg())}, headers=headers)
        assert ok.status_code == 200


def test_refuses_to_bind_beyond_loopback_without_a_token():
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"], env={"GEOLOC_TOKEN": ""})
    assert result.exit_code == 2 and "without a token" in result.stderr


# --- in a real browser -------------------------------------------------------------------------


@contextmanager
def launched_browser():
    """Headless Chromium under Playwright, whose event loop runs in this thread until the block ends."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing; scripts/setup.sh --dev installs it (apt package chromium)")
        pytest.skip("no Chromium on this machine (scripts/setup.sh --dev installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def browser():
    with launched_browser() as browser:
        yield browser


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(app) -> Iterator[int]:
    """`app` under uvicorn on a free loopback port, in a thread, for as long as the block runs."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def live_server(guesser):
    with serving(create_app(lambda: guesser, ServeSettings(tiles=None))) as port:
        yield f"http://127.0.0.1:{port}"


def ready_page(browser, url: str) -> tuple[object, list[str]]:
    """The app's page once it says Ready, and the console errors and page errors it logs meanwhile and after."""
    page = browser.new_page()
    problems = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(url, wait_until="networkidle")
    page.wait_for_selector("#status:has-text('Ready')", timeout=20_000)
    return page, problems


def test_drop_a_photo_in_the_browser_and_see_it_on_the_map(browser, live_server, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image_bytes(gps_block(48.8584, 2.2945), size=(160, 120)))
    page, problems = ready_page(browser, live_server)
    page.set_input_files("#photo", str(photo))
    page.wait_for_selector(".guess-marker", timeout=20_000)
    page.wait_for_selector(".exif-marker", timeout=5_000)
    assert page.locator("#alternatives li").count() == 3
    assert "EXIF GPS: 48.85840" in page.inner_text("#exif")
    page.screenshot(path=str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000
    assert problems == []
    page.close()


def test_the_batch_map_opens_offline_without_console_errors(browser, tmp_path):
    from geoloc.maps import map_html
    from geoloc.predict import Alternative, PhotoGuess

    guess = PhotoGuess("a.jpg", "a.jpg", 10.0, 170.0, "Somewhere", 300.0,
                       [Alternative(10.0, 170.0, 0.5, "Somewhere"), Alternative(12.0, -175.0, 0.2, "Elsewhere")],
                       {"lat": 10.5, "lon": 171.0})
    path = tmp_path / "map.html"
    path.write_text(map_html([guess], {"a.jpg": (11.0, 179.0)}))
    page = browser.new_page()
    problems = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(path.as_uri(), wait_until="domcontentloaded", timeout=60_000)  # generous: CI machines may be loaded
    page.wait_for_selector("path.confidence-region", timeout=60_000)
    assert page.locator("path.leaflet-interactive").count() >= 5
    page.screenshot(path=str(tmp_path / "map.png"))
    assert problems == []
    page.close()


def test_predict_writes_geojson(tiny_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    subset = geoclip_gallery()[::100]
    monkeypatch.setattr(geoclip_module, "geoclip_gallery", lambda: subset)
    photo = tmp_path / "a.jpg"
    photo.write_bytes(jpeg())
    out = tmp_path / "predictions.geojson"
    result = CliRunner().invoke(cli, ["predict", str(photo), "--backbone", str(tiny_clip), "--out", str(out),
                                      "--device", "cpu", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    collection = json.loads(out.read_text())
    feature = collection["features"][0]
    assert collection["type"] == "FeatureCollection" and feature["geometry"]["type"] == "Point"
    assert feature["properties"]["image_id"] == "a.jpg" and len(feature["properties"]["candidates"]) == 2


def uncertain_guess(radius_km: float):
    from geoloc.predict import Alternative, PhotoGuess

    return PhotoGuess("a.jpg", "a.jpg", 48.86, 2.29, "Paris", radius_km,
                      [Alternative(48.86, 2.29, 0.5, "Paris"), Alternative(45.76, 4.84, 0.2, "Lyon")], None)


ZOOM_LIMITS = {5.0: (10, 18), 500.0: (4, 8), 5000.0: (1, 4), 15000.0: (0, 2)}


def assert_region_in_view(page, radius_km: float) -> None:
    assert page.locator("path.confidence-region").count() >= 1
    zoom = page.evaluate("map.getZoom()")
    low, high = ZOOM_LIMITS[radius_km]
    assert low <= zoom <= high, f"zoom {zoom} for {radius_km} km"
    view = page.evaluate("(() => { const b = map.getBounds(); return [b.getSouth(), b.getWest(), b.getNorth(), "
                         "b.getEast()]; })()")
    region = drawable_region(48.86, 2.29, radius_km)["region_bounds"]
    (south, west), (north, east) = region
    slack = 1e-6
    assert view[0] <= south + slack and view[1] <= west + slack and view[2] >= north - slack and view[3] >= east - slack


@pytest.mark.parametrize("radius_km", sorted(ZOOM_LIMITS))
def test_the_batch_map_shows_the_whole_confidence_region(browser, tmp_path, radius_km):
    from geoloc.maps import map_html

    path = tmp_path / "map.html"
    path.write_text(map_html([uncertain_guess(radius_km)]))
    page = browser.new_page(viewport={"width": 1024, "height": 640})
    page.goto(path.as_uri(), wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_selector("path.confidence-region", timeout=60_000)
    assert_region_in_view(page, radius_km)
    page.screenshot(path=f"/tmp/map_{int(radius_km)}.png")
    page.close()


@pytest.mark.parametrize("radius_km", [5.0, 15000.0])
def test_the_serve_page_shows_the_whole_confidence_region(browser, tmp_path, radius_km):
    guess = uncertain_guess(radius_km)
    with serving(create_app(lambda: (lambda photos: [guess]), ServeSettings(tiles=None))) as port:
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(jpeg())
        page = browser.new_page(viewport={"width": 1024, "height": 640})
        page.goto(f"http://127.0.0.1:{port}", wait_until="networkidle")
        page.wait_for_selector("#status:has-text('Ready')", timeout=20_000)
        page.set_input_files("#photo", str(photo))
        page.wait_for_selector("path.confidence-region", timeout=20_000)
        page.wait_for_timeout(500)  # fitBounds animates when the zoom changes a little
        assert_region_in_view(page, radius_km)
        page.screenshot(path=f"/tmp/serve_map_{int(radius_km)}.png")
        page.close()


# --- over real sockets: stalled uploads, the event loop, the token's scheme ---------------------

BOUNDARY = "geoloc-test-boundary"


def multipart(photo: bytes) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + photo + f"\r\n--{BOUNDARY}--\r\n".encode()


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, JSON body) of one request on its own connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        sent = dict(headers or {})
        if body is not None:
            sent["Content-Type"] = f"multipart/form-data; boundary={BOUNDARY}"
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def wait_ready(port: int, headers: dict | None = None) -> None:
    deadline = time.monotonic() + 20
    while call(port, "GET", "/api/health", headers=headers)[0] != 200:
        assert time.monotonic() < deadline, "the model never became ready"
        time.sleep(0.05)


def stalled_upload(port: int, photo: bytes) -> socket.socket:
    """A client that sends its headers and half its photo, then nothing more."""
    body = multipart(photo)
    client = socket.create_connection(("127.0.0.1", port), timeout=20)
    client.sendall(f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
                   f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode() + body[:len(body) // 2])
    return client


def answer_of(client: socket.socket) -> tuple[int, bytes]:
    """The status of what the server sent back, and everything up to the server closing the connection."""
    received = b""
    while chunk := client.recv(65536):
        received += chunk
    client.close()
    return int(received.split(b" ", 2)[1]), received


def stub_app(**settings) -> object:
    guess = uncertain_guess(5.0)
    return create_app(lambda: (lambda photos: [guess]), ServeSettings(tiles=None, **settings))


def test_ten_stalled_uploads_get_408_and_a_good_photo_still_gets_its_answer():
    with serving(stub_app(max_queue=8, max_uploads=12, upload_timeout_s=2.0)) as port:
        wait_ready(port)
        stalled = [stalled_upload(port, jpeg()) for _ in range(10)]
        time.sleep(0.3)  # all ten are being received, holding upload slots, none the inference queue
        sent = time.monotonic()
        assert call(port, "POST", "/api/predict", multipart(jpeg()))[0] == 200
        assert time.monotonic() - sent < 1.5, "the good photo waited for the stalled uploads"
        answers = [answer_of(c) for c in stalled]
        assert [status for status, _ in answers] == [408] * 10
        assert all(b"did not arrive within 2 s" in text for _, text in answers)


def test_uploads_beyond_their_slots_are_turned_away_at_once():
    with serving(stub_app(max_uploads=3, upload_timeout_s=2.0)) as port:
        wait_ready(port)
        stalled = [stalled_upload(port, jpeg()) for _ in range(5)]
        turned_away = []
        while len(turned_away) < 2:
            readable, _, _ = select.select([c for c in stalled if c not in turned_away], [], [], 20)
            assert readable, "no answer to the uploads beyond their slots"
            turned_away += readable
        assert [answer_of(c)[0] for c in turned_away] == [503, 503]
        assert sorted(answer_of(c)[0] for c in stalled if c not in turned_away) == [408] * 3


def test_an_upload_trickling_in_past_the_limit_gets_408():
    with serving(stub_app(upload_timeout_s=0.5)) as port:
        wait_ready(port)
        client = stalled_upload(port, jpeg())
        client.setblocking(False)
        for _ in range(200):  # one byte every 50 ms: never stalled, never done in time
            if select.select([client], [], [], 0.05)[0]:
                break
            client.send(b"x")
        client.setblocking(True)
        assert answer_of(client)[0] == 408
        assert call(port, "POST", "/api/predict", multipart(jpeg()))[0] == 200


def test_health_answers_while_a_photo_decodes(monkeypatch):
    decoding, release = threading.Event(), threading.Event()
    real_decode = serve_module.decode_photo

    def slow_decode(data, max_pixels=None):
        decoding.set()
        assert release.wait(20)
        return real_decode(data, max_pixels)

    monkeypatch.setattr(serve_module, "decode_photo", slow_decode)
    with serving(stub_app()) as port:
        wait_ready(port)
        upload = {}
        worker = threading.Thread(target=lambda: upload.update(answer=call(port, "POST", "/api/predict",
                                                                           multipart(jpeg()))))
        worker.start()
        try:
            assert decoding.wait(20)
            assert call(port, "GET", "/api/health") == (200, {"status": "ok"})
            assert not upload, "the photo is still decoding"
        finally:
            release.set()
            worker.join(20)
        assert upload["answer"][0] == 200


def test_the_bearer_scheme_is_matched_in_any_case():
    with serving(stub_app(token="s3cret")) as port:
        assert call(port, "GET", "/api/health")[0] == 401
        wait_ready(port, {"authorization": "bearer s3cret"})
        for value in ("Bearer s3cret", "BEARER s3cret", "bearer  s3cret"):
            assert call(port, "GET", "/api/health", headers={"authorization": value})[0] == 200, value
        for value in ("bearer nope", "Basic s3cret", "s3cret", "bearers3cret"):
            assert call(port, "GET", "/api/health", headers={"authorization": value})[0] == 401, value
        status, _ = call(port, "POST", "/api/predict", multipart(jpeg()), {"authorization": "bearer s3cret"})
        assert status == 200


def test_an_upload_a_chunk_past_the_limit_is_refused_before_any_byte_reaches_the_disk(monkeypatch):
    rollovers = []
    monkeypatch.setattr(starlette.formparsers.SpooledTemporaryFile, "rollover", lambda self: rollovers.append(1))
    limit = 200_000
    with serving(stub_app(max_upload_bytes=limit)) as port:
        wait_ready(port)
        # A 64 KiB chunk beyond the limit: more than the spool once held, less than the body allowance.
        status, answer = call(port, "POST", "/api/predict", multipart(b"\xff" * (limit + 60_000)))
        assert status == 413 and "larger than" in answer["error"]
        at_the_limit = jpeg() + b"\x00" * (limit - len(jpeg()))  # bytes after the image's end: still a JPEG
        assert call(port, "POST", "/api/predict", multipart(at_the_limit))[0] == 200
    assert rollovers == [], "an upload was spooled to disk"


@pytest.mark.parametrize(("headers", "refusal"), [
    ({"Host": "evil.example:{port}"}, "does not answer to the name 'evil.example'"),  # DNS rebinding
    ({"Host": "127.0.0.1.evil.example"}, "does not answer to the name"),
    ({"Origin": "http://evil.example"}, "cross-origin request from 'http://evil.example' refused"),
    ({"Origin": "null"}, "cross-origin request"),
    ({"Origin": "http://photos.lan:8000"}, None),
    ({"Host": "photos.lan:{port}"}, None),
    ({"Host": "[::1]:{port}", "Origin": "http://localhost:{port}"}, None),
])
def test_only_requests_naming_this_server_are_answered(headers, refusal):
    with serving(stub_app(allowed_hosts=("Photos.LAN",))) as port:
        wait_ready(port)
        sent = {name: value.format(port=port) for name, value in headers.items()}
        for method, path, body in [("GET", "/api/health", None), ("POST", "/api/predict", multipart(jpeg()))]:
            status, answer = call(port, method, path, body, sent)
            if refusal is None:
                assert status == 200, answer
            else:
                assert status == 403 and refusal in answer["error"], answer
        page = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        page.request("GET", "/", headers=sent)
        assert (page.getresponse().status == 403) == (refusal is not None)
        page.close()


def test_allowed_hosts_come_from_the_command_line(monkeypatch):
    import uvicorn

    created = {}
    monkeypatch.setattr(serve_module, "create_app", lambda load, settings: created.update(settings=settings))
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    for host, expected in [("127.0.0.1", ("photos.lan", "127.0.0.1")), ("0.0.0.0", ("photos.lan",))]:
        result = CliRunner().invoke(cli, ["serve", "--host", host, "--allowed-host", "photos.lan"],
                                    env={"GEOLOC_TOKEN": "s3cret"})
        assert result.exit_code == 0, result.output
        assert created["settings"].allowed_hosts == expected


HOSTILE_NAME = '<!--<script>x.jpg</script><img id="injected" src="x" onerror="window.pwned=1">'


def hostile_guess():
    from geoloc.predict import Alternative, PhotoGuess

    return PhotoGuess(HOSTILE_NAME, HOSTILE_NAME, 48.86, 2.29, HOSTILE_NAME, 50.0,
                      [Alternative(48.86, 2.29, 0.5, HOSTILE_NAME), Alternative(45.76, 4.84, 0.2, HOSTILE_NAME)],
                      {"lat": 48.0, "lon": 2.0})


def test_a_hostile_file_name_is_data_in_the_generated_map_page():
    from geoloc.maps import map_html

    page = map_html([hostile_guess()], {HOSTILE_NAME: (48.0, 2.5)}, title=HOSTILE_NAME)
    # The page's own two scripts (Leaflet, the map) and nothing the name could open or close.
    assert page.count("<script") == 2 and page.count("</script>") == 2 and "<!--" not in page
    assert "<img" not in page and "<title>&lt;!--&lt;script&gt;" in page
    data = page.split("const photos = ", 1)[1].split(";\n", 1)[0]
    (photo,) = json.loads(data)
    assert photo["image"] == HOSTILE_NAME and photo["alternatives"][0]["place"] == HOSTILE_NAME


def test_names_are_text_in_map_popups_and_serve_tooltips(browser, tmp_path):
    from geoloc.maps import map_html

    path = tmp_path / "map.html"
    path.write_text(map_html([hostile_guess()], {HOSTILE_NAME: (48.0, 2.5)}))
    page = browser.new_page()
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(path.as_uri(), wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_selector("path.confidence-region", timeout=60_000)
    page.evaluate("() => { map.eachLayer((layer) => layer.getPopup && layer.getPopup() && layer.openPopup()); }")
    assert HOSTILE_NAME in page.inner_text(".leaflet-popup-content")
    assert page.evaluate("document.getElementById('injected') === null && window.pwned === undefined")
    assert problems == []
    page.close()

    guess = hostile_guess()
    with serving(create_app(lambda: (lambda photos: [guess]), ServeSettings(tiles=None))) as port:
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(jpeg())
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}", wait_until="networkidle")
        page.wait_for_selector("#status:has-text('Ready')", timeout=20_000)
        page.set_input_files("#photo", str(photo))
        page.wait_for_selector(".guess-marker", timeout=20_000)
        page.evaluate("() => { answerLayer.eachLayer((layer) => layer.getTooltip() && layer.openTooltip()); }")
        tooltips = page.locator(".leaflet-tooltip").all_inner_texts()
        assert f"best guess: {HOSTILE_NAME}" in tooltips and f"{HOSTILE_NAME}: p = 0.200" in tooltips
        assert page.evaluate("document.getElementById('injected') === null && window.pwned === undefined")
        page.close()
