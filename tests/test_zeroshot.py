"""`geoloc candidates zeroshot` against a local chat-completions stand-in that misbehaves on purpose."""

import ast
import base64
import hashlib
import io
import json
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from geoloc.cli import app

SECRET = "sk-test-d0-not-leak-7f3a9c"


@dataclass
class Reply:
    status: int = 200
    content: str | None = None
    delay_s: float = 0.0
    headers: dict = field(default_factory=dict)
    choices: int | None = None
    """How many choices to return (default: the n asked); `{i}` in content becomes the choice's index."""
    content_for: Callable[[str], str] | None = None
    """The content from the request's prompt, when it depends on it (before `{i}` is replaced)."""


@dataclass
class StandIn:
    """Scripted replies per photo (by the SHA-256 of the bytes sent), and a log of what came in."""

    script: dict[str, list[Reply]]
    key: str | None = SECRET
    """The bearer token required, or None for an endpoint that needs none (it then logs what came)."""
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def arrive(self, photo_sha: str, **details) -> Reply:
        """Log a request and pick its reply by how many came for this photo before it."""
        with self.lock:
            seen = sum(1 for r in self.requests if r["photo"] == photo_sha)
            self.requests.append({"photo": photo_sha, "at": time.monotonic(), **details})
        replies = self.script[photo_sha]
        return replies[min(seen, len(replies) - 1)]


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client that timed out closed its socket: expected here, not worth a traceback."""


def make_handler(stand_in: StandIn):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

        def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": {"message": "no such route"}})
            if stand_in.key is not None and self.headers.get("Authorization") != f"Bearer {stand_in.key}":
                return self._send(401, {"error": {"message": "bad key"}})
            parts = body["messages"][0]["content"]
            url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
            header, encoded = url.split(",", 1)
            assert header.startswith("data:image/") and header.endswith(";base64")
            sent = base64.b64decode(encoded)
            photo = hashlib.sha256(sent).hexdigest()
            image = next(p["image_url"] for p in parts if p["type"] == "image_url")
            prompt = next(p["text"] for p in parts if p["type"] == "text")
            reply = stand_in.arrive(photo, mime=header[5:-7], temperature=body.get("temperature"), data=sent,
                                    n=body.get("n"), max_tokens=body.get("max_tokens"), detail=image.get("detail"),
                                    parts=[p["type"] for p in parts], prompt=prompt,
                                    credentials={name.lower(): self.headers[name] for name in self.headers
                                                 if name.lower() in ("authorization", "openai-organization",
                                                                     "openai-project")})
            time.sleep(reply.delay_s)
            if reply.status != 200:
                return self._send(reply.status, {"error": {"message": "scripted failure"}}, reply.headers)
            count = reply.choices if reply.choices is not None else body.get("n") or 1
            content = reply.content_for(prompt) if reply.content_for else reply.content or ""
            self._send(200, {
                "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": i, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content.replace("{i}", str(i))}}
                            for i in range(count)],
            })

    return Handler


@pytest.fixture
def serve():
    servers = []

    def start(script: dict[str, list[Reply]], key: str | None = SECRET) -> tuple[StandIn, str]:
        stand_in = StandIn(script, key)
        server = QuietServer(("127.0.0.1", 0), make_handler(stand_in))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return stand_in, f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def write_photo(path: Path, colour: tuple[int, int, int], fmt: str = "JPEG") -> str:
    Image.new("RGB", (32, 24), colour).save(path, format=fmt)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shas = {
        "rate_limited.jpg": write_photo(folder / "rate_limited.jpg", (200, 10, 10)),
        "server_errors.jpg": write_photo(folder / "server_errors.jpg", (10, 200, 10)),
        "slow.jpg": write_photo(folder / "slow.jpg", (10, 10, 200)),
        "prose.png": write_photo(folder / "prose.png", (50, 50, 50), "PNG"),
        "sub/fenced.tif": write_photo(folder / "sub" / "fenced.tif", (90, 90, 10), "TIFF"),
        "refusal.jpg": write_photo(folder / "refusal.jpg", (0, 90, 90)),
        "out_of_range.jpg": write_photo(folder / "out_of_range.jpg", (90, 0, 90)),
    }
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return folder, shas


def script_for(shas: dict[str, str]) -> dict[str, list[Reply]]:
    # Every TIFF is re-encoded as JPEG before sending: its sha as sent differs, so the
    # stand-in answers it by whatever arrives that is not one of the others.
    return {
        shas["rate_limited.jpg"]: [Reply(429, headers={"Retry-After": "1"}),
                                   Reply(content='{"latitude": 48.8584, "longitude": 2.2945}')],
        shas["server_errors.jpg"]: [Reply(500), Reply(503), Reply(content="22°57′7″S 43°12′38″W")],
        shas["slow.jpg"]: [Reply(delay_s=2.0, content='{"latitude": 1, "longitude": 1}'),
                           Reply(content="Latitude: 35.6586, Longitude: 139.7454")],
        shas["prose.png"]: [Reply(content="This looks like Sydney; my best guess is -33.8568, 151.2153.")],
        shas["refusal.jpg"]: [Reply(content="I'm sorry, I can't determine where this photo was taken.")],
        shas["out_of_range.jpg"]: [Reply(content='{"latitude": 123.5, "longitude": 200.0}')],
    }


class FencedFallback(dict):
    """Any photo not in the script (the re-encoded TIFF) gets a JSON answer in a code fence."""

    def __missing__(self, key):
        return [Reply(content='```json\n{"latitude": "33.8568° S", "longitude": "151.2153° E"}\n```')]


def run_zeroshot(folder: Path, base_url: str, tmp_path: Path, env: dict, samples: int = 2, *extra: str):
    out, cache = tmp_path / "answers.parquet", tmp_path / "cache.sqlite"
    arguments = ["candidates", "zeroshot", str(folder), "--model", "stand-in-vl", "--base-url", base_url,
                 "--samples", str(samples), "--concurrency", "4", "--timeout", "0.5", "--out", str(out),
                 "--cache", str(cache), *extra]
    result = CliRunner().invoke(app, arguments, env=env)
    return result, out, cache


def test_misbehaving_endpoint_every_sample_parsed_key_kept_secret(serve, photos, tmp_path):
    folder, shas = photos
    stand_in, base_url = serve(FencedFallback(script_for(shas)))
    env = {"GEOLOC_API_KEY": SECRET, "OPENAI_API_KEY": ""}
    result, out, cache = run_zeroshot(folder, base_url, tmp_path, env)
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out)
    assert table.height == 8 * 2
    assert table.group_by("query_id").len()["len"].to_list() == [2] * 8
    by_photo = {row["query_id"]: row for row in table.filter(pl.col("sample") == 1).iter_rows(named=True)}
    expected = {
        "rate_limited.jpg": (48.8584, 2.2945),
        "server_errors.jpg": (-(22 + 57 / 60 + 7 / 3600), -(43 + 12 / 60 + 38 / 3600)),
        "slow.jpg": (35.6586, 139.7454),
        "prose.png": (-33.8568, 151.2153),
        "sub/fenced.tif": (-33.8568, 151.2153),
    }
    for query_id, (lat, lon) in expected.items():
        row = by_photo[query_id]
        assert row["error"] is None, (query_id, row)
        assert row["lat"] == pytest.approx(lat, abs=1e-12) and row["lon"] == pytest.approx(lon, abs=1e-12)
    for query_id, reason in [("refusal.jpg", "no coordinates"), ("out_of_range.jpg", "out of range"),
                             ("corrupt.jpg", "unreadable image")]:
        rows = table.filter(pl.col("query_id") == query_id)
        assert rows["lat"].null_count() == 2 and rows["lon"].null_count() == 2, query_id
        assert all(reason in e for e in rows["error"]), (query_id, rows["error"].to_list())
    assert table.filter(pl.col("query_id") == "refusal.jpg")["answer"][0].startswith("I'm sorry")
    # The corrupt file cost no request; the TIFF went as JPEG, the PNG as PNG.
    mimes = {r["mime"] for r in stand_in.requests}
    assert mimes == {"image/jpeg", "image/png"}
    assert all(r["temperature"] == 0.7 for r in stand_in.requests)
    # Retry-After was honoured: the retry of the request that got the 429 (the third to
    # arrive; the other sample's went through meanwhile) came at least a second later.
    times = [r["at"] for r in stand_in.requests if r["photo"] == shas["rate_limited.jpg"]]
    assert len(times) == 3 and times[2] - times[0] >= 0.95
    # The key appears nowhere we write or print.
    for blob in (result.stdout.encode(), result.stderr.encode(), out.read_bytes(), cache.read_bytes()):
        assert SECRET.encode() not in blob

    sent = len(stand_in.requests)
    again, out_again, _ = run_zeroshot(folder, base_url, tmp_path, env)
    assert again.exit_code == 0, again.output
    assert len(stand_in.requests) == sent, "a rerun must be served from the cache"
    assert "0 request(s) sent" in again.stdout
    assert pl.read_parquet(out_again).equals(table)


def test_a_local_endpoint_gets_no_key_unless_geoloc_api_key_is_set(serve, tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    write_photo(folder / "a.jpg", (120, 30, 60))
    stand_in, base_url = serve(AnswerEverything([Reply(content='{"latitude": 10, "longitude": 20}')]), key=None)
    openai_only = {"GEOLOC_API_KEY": "", "OPENAI_API_KEY": SECRET, "OPENAI_ORG_ID": "org-secret",
                   "OPENAI_PROJECT_ID": "proj-secret"}
    result, out, _ = run_zeroshot(folder, base_url, tmp_path, openai_only, 1)
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out)["lat"].to_list() == [10.0]
    assert [r["credentials"] for r in stand_in.requests] == [{}], "OpenAI's key or account went elsewhere"

    result, _, _ = run_zeroshot(folder, base_url, tmp_path, {**openai_only, "GEOLOC_API_KEY": "sk-local"}, 1,
                                "--temperature", "0.1")
    assert result.exit_code == 0, result.output
    assert stand_in.requests[-1]["credentials"] == {"authorization": "Bearer sk-local"}


def test_an_endpoint_needing_a_key_it_was_not_given_stops_the_run_with_a_clear_message(serve, photos, tmp_path):
    folder, shas = photos
    stand_in, base_url = serve(FencedFallback(script_for(shas)))
    for env in ({"GEOLOC_API_KEY": "", "OPENAI_API_KEY": SECRET}, {"GEOLOC_API_KEY": "sk-wrong"}):
        result, out, _ = run_zeroshot(folder, base_url, tmp_path, env)
        assert result.exit_code == 2
        message = " ".join(result.stderr.split())
        assert "refused the request (401)" in message and "GEOLOC_API_KEY" in message
        assert "sk-wrong" not in result.output and SECRET not in result.output
        assert not out.exists()
    assert all(r["credentials"].get("authorization") != f"Bearer {SECRET}" for r in stand_in.requests)


@pytest.mark.parametrize(("base_url", "env", "allow_http", "expected"), [
    ("https://api.openai.com/v1", {"OPENAI_API_KEY": "sk-o"}, False, "sk-o"),
    ("https://api.openai.com/v1", {"OPENAI_API_KEY": "sk-o", "GEOLOC_API_KEY": "sk-g"}, False, "sk-g"),
    ("https://API.OpenAI.com/v1/", {"OPENAI_API_KEY": "sk-o"}, False, "sk-o"),
    ("https://api.openai.com.example.net/v1", {"OPENAI_API_KEY": "sk-o"}, False, None),
    ("https://llm.example.net/v1", {"OPENAI_API_KEY": "sk-o"}, False, None),
    ("https://llm.example.net/v1", {"OPENAI_API_KEY": "sk-o", "GEOLOC_API_KEY": "sk-g"}, False, "sk-g"),
    ("http://127.0.0.1:8000/v1", {"OPENAI_API_KEY": "sk-o"}, False, None),
    ("http://localhost:8000/v1", {"GEOLOC_API_KEY": "sk-g"}, False, "sk-g"),
    ("http://[::1]:8000/v1", {}, False, None),
    ("http://192.168.1.20:8000/v1", {"GEOLOC_API_KEY": "sk-g"}, True, "sk-g"),
    ("https://api.openai.com/v1", {}, False, "no API key for api.openai.com"),
    ("http://192.168.1.20:8000/v1", {"GEOLOC_API_KEY": "sk-g"}, False, "--allow-http"),
    ("http://api.openai.com/v1", {"OPENAI_API_KEY": "sk-o"}, False, "--allow-http"),
    ("ftp://127.0.0.1/v1", {}, False, "not an http(s) URL"),
])
def test_a_key_goes_only_where_it_was_set_for_and_photos_not_in_clear(base_url, env, allow_http, expected):
    from geoloc.candidates.zeroshot import ZeroShotError, endpoint_key

    if expected is None or expected.startswith("sk-"):
        assert endpoint_key(base_url, allow_http, env) == expected
    else:
        with pytest.raises(ZeroShotError, match=re.escape(expected)):
            endpoint_key(base_url, allow_http, env)


def test_plain_http_beyond_this_machine_is_refused_before_any_photo_is_read(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    write_photo(folder / "a.jpg", (120, 30, 60))
    result, out, cache = run_zeroshot(folder, "http://192.0.2.1:8000/v1", tmp_path, {"GEOLOC_API_KEY": SECRET})
    assert result.exit_code == 2 and "--allow-http" in result.stderr
    assert not out.exists() and not cache.exists()


XMP_GPS = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="48,51.5N"/>'
           b'</rdf:RDF></x:xmpmeta>')
ICC = b"stand-in ICC profile bytes"


def gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010E] = "secret description"
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    return exif


def planted_photos(folder: Path) -> dict[str, bytes]:
    """Photos of every sent-as-is format with GPS in EXIF, XMP, IPTC, comments and text chunks."""
    folder.mkdir()
    image = Image.radial_gradient("L").convert("RGB").resize((40, 30))
    jpeg = io.BytesIO()
    image.save(jpeg, format="JPEG", exif=gps_exif(), icc_profile=ICC, comment=b"taken at home")
    data = jpeg.getvalue()
    xmp = b"http://ns.adobe.com/xap/1.0/\x00" + XMP_GPS
    iptc = b"Photoshop 3.0\x008BIM\x04\x04\x00\x00\x00\x00\x00\x0c\x1c\x02\x5a\x00\x05Paris"
    segments = b"".join(b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload
                        for marker, payload in ((0xE1, xmp), (0xED, iptc)))
    (folder / "a.jpg").write_bytes(data[:2] + segments + data[2:])
    info = PngImagePlugin.PngInfo()
    info.add_text("GPSLatitude", "48.8584")
    info.add_itxt("XML:com.adobe.xmp", XMP_GPS.decode())
    image.save(folder / "b.png", pnginfo=info, exif=gps_exif(), icc_profile=ICC)
    image.save(folder / "c.webp", lossless=True, exif=gps_exif(), xmp=XMP_GPS, icc_profile=ICC)
    image.convert("P").save(folder / "d.gif", comment=b"GPS 48.8584 2.2945")
    return {path.name: path.read_bytes() for path in folder.iterdir()}


class AnswerEverything(dict):
    def __init__(self, replies: list[Reply]) -> None:
        super().__init__()
        self.replies = replies

    def __missing__(self, key):
        return self.replies


def test_no_photo_metadata_reaches_the_endpoint_pixels_unchanged(serve, tmp_path):
    originals = planted_photos(tmp_path / "planted")
    answer = [Reply(content='{"latitude": 1, "longitude": 2}')]
    stand_in, base_url = serve(AnswerEverything(answer))
    result, out, _ = run_zeroshot(tmp_path / "planted", base_url, tmp_path, {"GEOLOC_API_KEY": SECRET}, samples=1)
    assert result.exit_code == 0, result.output
    sent = {r["mime"]: r["data"] for r in stand_in.requests}
    assert set(sent) == {"image/jpeg", "image/png", "image/webp", "image/gif"}
    for mime, data in sent.items():
        for planted in (b"GPS", b"Exif", b"secret description", b"xmpmeta", b"Photoshop", b"Paris", b"taken at home"):
            assert planted not in data, (mime, planted)
        with Image.open(io.BytesIO(data)) as image:
            assert not image.getexif(), mime
            assert not {"comment", "xmp", "exif", "GPSLatitude"} & set(image.info), (mime, image.info.keys())
            if mime != "image/gif":
                assert image.info.get("icc_profile") == ICC, mime
    names = {"image/jpeg": "a.jpg", "image/png": "b.png", "image/webp": "c.webp", "image/gif": "d.gif"}
    for mime, data in sent.items():
        with Image.open(io.BytesIO(originals[names[mime]])) as before, Image.open(io.BytesIO(data)) as after:
            assert before.format == after.format
            assert before.tobytes() == after.tobytes() and before.size == after.size, mime
    # JPEG: the entropy-coded data is byte-for-byte the original's (no re-encode).
    jpeg = originals["a.jpg"]
    assert sent["image/jpeg"].endswith(jpeg[jpeg.index(b"\xff\xda"):])


def test_cache_key_covers_endpoint_and_sampling_settings(serve, tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    write_photo(folder / "a.jpg", (120, 30, 60))
    first, first_url = serve(AnswerEverything([Reply(content='{"latitude": 10, "longitude": 20}')]))
    second, second_url = serve(AnswerEverything([Reply(content='{"latitude": -30, "longitude": -40}')]))
    env = {"GEOLOC_API_KEY": SECRET}

    def ask(base_url: str, *extra: str) -> tuple[float, int]:
        result, out, _ = run_zeroshot(folder, base_url, tmp_path, env, 1, *extra)
        assert result.exit_code == 0, result.output
        return pl.read_parquet(out)["lat"][0], len(first.requests) + len(second.requests)

    assert ask(first_url) == (10, 1)
    assert ask(second_url) == (-30, 2), "same model name, other endpoint: its own answer"
    assert ask(first_url + "/") == (10, 2), "the same settings (trailing slash aside) hit the cache"
    assert ask(first_url, "--max-tokens", "50") == (10, 3), "another max_tokens misses the cache"
    assert ask(first_url, "--temperature", "0.2") == (10, 4)
    assert ask(first_url, "--max-tokens", "50") == (10, 4)


def test_georanker_preset_asks_ten_answers_in_one_request(serve, tmp_path):
    from geoloc.candidates.zeroshot import GEORANKER_PROMPT

    folder = tmp_path / "one"
    folder.mkdir()
    write_photo(folder / "a.jpg", (20, 140, 60))
    answers = AnswerEverything([Reply(content='{"latitude": 4{i}.5, "longitude": 2.{i}}'),
                                Reply(content="I cannot tell where this is.")])
    stand_in, base_url = serve(answers)
    env = {"GEOLOC_API_KEY": SECRET}
    out, cache = tmp_path / "answers.parquet", tmp_path / "cache.sqlite"
    arguments = ["candidates", "zeroshot", str(folder), "--model", "stand-in-vl", "--base-url", base_url,
                 "--preset", "georanker", "--out", str(out), "--cache", str(cache)]
    result = CliRunner().invoke(app, arguments, env=env)
    assert result.exit_code == 0, result.output
    [request] = stand_in.requests
    assert (request["n"], request["temperature"], request["max_tokens"], request["detail"]) == (10, 1.2, 200, "low")
    assert request["prompt"] == GEORANKER_PROMPT and request["parts"] == ["text", "image_url"]
    assert GEORANKER_PROMPT.count("\n                ") == 4 and GEORANKER_PROMPT.startswith("Suppose you are")
    table = pl.read_parquet(out)
    assert table["sample"].to_list() == list(range(10))
    assert table["lat"].to_list() == [float(f"4{i}.5") for i in range(10)]
    assert CliRunner().invoke(app, arguments, env=env).exit_code == 0 and len(stand_in.requests) == 1

    # Flags override the preset; an answer without coordinates stays empty, never (0, 0).
    result = CliRunner().invoke(app, [*arguments, "--samples", "2", "--temperature", "0.3"], env=env)
    assert result.exit_code == 0, result.output
    assert (stand_in.requests[-1]["n"], stand_in.requests[-1]["temperature"]) == (2, 0.3)
    table = pl.read_parquet(out)
    assert table["lat"].to_list() == [None, None] and table["error"].null_count() == 0


def test_an_endpoint_that_returns_fewer_answers_than_asked_is_asked_again_for_the_rest(serve, tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    write_photo(folder / "a.jpg", (200, 140, 60))
    stand_in, base_url = serve(AnswerEverything([Reply(content='{"latitude": 1{i}, "longitude": 2}', choices=3)]))
    env = {"GEOLOC_API_KEY": SECRET}
    result, out, _ = run_zeroshot(folder, base_url, tmp_path, env, 5, "--answers-per-request", "5")
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out)
    assert table["lat"].to_list() == [10, 11, 12, None, None]
    assert table["error"][3] == "the endpoint returned 3 of the 5 answers asked in one request"
    result, out, _ = run_zeroshot(folder, base_url, tmp_path, env, 5, "--answers-per-request", "5")
    assert [r["n"] for r in stand_in.requests] == [5, 2]  # only the two missing samples, in one request
    assert pl.read_parquet(out)["lat"].to_list() == [10, 11, 12, 10, 11]


G3_RAG_REQUEST = """Suppose you are an expert in geo-localization, Please analyze this image and give me a guess of the location.
                Your answer must be to the coordinates level in (latitude, longitude) format.
                For your reference, these are coordinates of some similar images: {similar}, and these are coordinates of some dissimilar images: {dissimilar}.
                Remember, you must have an answer, just output your best guess, don't answer me that you can't give an location.
                Your answer should be in the following JSON format without any other information: {{"latitude": float,"longitude": float}}.
                Your answer should be in the following JSON format without any other information: {{"latitude": float,"longitude": float}}.
                """  # noqa: E501
"""G3's llm_predict.py get_response_rag text as its source writes it (an f-string there, hence the braces)."""
NAMED = re.compile(r"similar images: (.*), and these are coordinates of some dissimilar images: (.*)\.\n")


def named_neighbours(prompt: str) -> tuple[list[list[float]], list[list[float]]]:
    """The coordinates a G3 prompt names, read back from its list notation."""
    similar, dissimilar = NAMED.search(prompt).groups()
    return tuple([ast.literal_eval(pair) for pair in ast.literal_eval(text)] for text in (similar, dissimilar))


def answer_by_k(prompt: str) -> str:
    """Answers whose latitude says which K asked: the number of dissimilar neighbours named (0: plain)."""
    k = len(named_neighbours(prompt)[1]) if "dissimilar images" in prompt else 0
    return f'{{"latitude": {k}.{{i}}, "longitude": 1.5}}'


def neighbour_table(rng: np.random.Generator) -> pl.DataFrame:
    """a.jpg: 20 retrieval and 20 reverse neighbours; b.jpg: 7 and 20; c.jpg: none. Rows shuffled."""
    rows = []
    for query_id, counts in (("a.jpg", {"retrieval": 20, "reverse": 20}), ("b.jpg", {"retrieval": 7, "reverse": 20})):
        for source, count in counts.items():
            lats = [round(v, int(d)) for v, d in zip(rng.uniform(-90, 90, count), rng.integers(0, 9, count))]
            lons = [round(v, int(d)) for v, d in zip(rng.uniform(-180, 180, count), rng.integers(0, 9, count))]
            rows += [(query_id, source, rank, lat, lon) for rank, (lat, lon) in enumerate(zip(lats, lons))]
    rows[3] = ("a.jpg", "retrieval", 3, 5e-05, 40.0)  # numbers G3 writes as 5e-05 and 40.0
    rows += [("a.jpg", "geoclip", 0, 1.0, 1.0), ("elsewhere.jpg", "retrieval", 0, 2.0, 2.0)]
    table = pl.DataFrame(rows, schema=["query_id", "source", "rank", "lat", "lon"], orient="row")
    return table.sample(fraction=1.0, shuffle=True, seed=3).with_columns(ref_uri=pl.lit("g/x.jpg"))


def first_k(table: pl.DataFrame, query_id: str, source: str, k: int) -> list[list[float]]:
    rows = table.filter((pl.col("query_id") == query_id) & (pl.col("source") == source)).sort("rank").head(k)
    return [[lat, lon] for lat, lon in rows.select("lat", "lon").iter_rows()]


def test_rag_prompts_name_exactly_the_neighbours_given_once_per_photo_and_k(serve, tmp_path):
    from geoloc.candidates.zeroshot import GEORANKER_PROMPT, NO_NEIGHBOURS

    folder = tmp_path / "photos"
    folder.mkdir()
    shas = {name: write_photo(folder / name, colour)
            for name, colour in (("a.jpg", (200, 0, 0)), ("b.jpg", (0, 200, 0)), ("c.jpg", (0, 0, 200)))}
    photo_of = {sha: name for name, sha in shas.items()}
    stand_in, base_url = serve(AnswerEverything([Reply(content_for=answer_by_k)]))
    neighbours = neighbour_table(np.random.default_rng(7))
    neighbours.write_parquet(tmp_path / "neighbours.parquet")
    env = {"GEOLOC_API_KEY": SECRET}

    def zeroshot(out: str, *extra: str):
        arguments = ["candidates", "zeroshot", str(folder), "--model", "stand-in-vl", "--base-url", base_url,
                     "--out", str(tmp_path / out), "--cache", str(tmp_path / "cache.sqlite"), *extra]
        result = CliRunner().invoke(app, arguments, env=env)
        assert result.exit_code == 0, result.output
        return result

    zeroshot("plain.parquet", "--preset", "g3")
    assert [r["prompt"] for r in stand_in.requests] == [GEORANKER_PROMPT] * 3
    sampling = {(r["n"], r["temperature"], r["max_tokens"], r["detail"]) for r in stand_in.requests}
    assert sampling == {(10, 1.2, 200, "low")}
    result = zeroshot("rag.parquet", "--neighbours", str(tmp_path / "neighbours.parquet"),
                      "--rag", "15", "--rag", "5", "--rag", "10")
    rag_requests = stand_in.requests[3:]
    asked = set()
    for request in rag_requests:
        assert (request["n"], request["temperature"], request["max_tokens"], request["detail"]) == (10, 1.2, 200, "low")
        photo = photo_of[request["photo"]]
        similar, dissimilar = named_neighbours(request["prompt"])
        k = len(dissimilar)  # both photos have 20 reverse neighbours
        assert similar == first_k(neighbours, photo, "retrieval", k)
        assert dissimilar == first_k(neighbours, photo, "reverse", k)
        expected = G3_RAG_REQUEST.format(similar=str([f"[{lat}, {lon}]" for lat, lon in similar]),
                                         dissimilar=str([f"[{lat}, {lon}]" for lat, lon in dissimilar]))
        assert request["prompt"] == expected
        asked.add((photo, k))
    assert len(rag_requests) == 6 and asked == {(p, k) for p in ("a.jpg", "b.jpg") for k in (5, 10, 15)}
    a_prompt = next(r["prompt"] for r in rag_requests if photo_of[r["photo"]] == "a.jpg")
    assert "'[5e-05, 40.0]'" in a_prompt

    table = pl.read_parquet(tmp_path / "rag.parquet")
    assert table.height == 3 * 3 * 10
    b = table.filter((pl.col("query_id") == "b.jpg") & (pl.col("sample") == 0))
    assert b.select("rag", "rag_retrieval", "rag_reverse", "lat").rows() == [(5, 5, 5, 5.0), (10, 7, 10, 10.0),
                                                                               (15, 7, 15, 15.0)]
    c = table.filter(pl.col("query_id") == "c.jpg")
    assert c["lat"].null_count() == 30 and set(c["error"]) == {NO_NEIGHBOURS}
    assert "1 photo(s) have no retrieval or reverse candidates" in result.stderr and "'c.jpg'" in result.stderr
    assert "2 prompt(s) name fewer neighbours than their K" in result.stderr

    # A rerun is served from the cache; other neighbours for a.jpg are other prompts, asked again.
    assert "0 request(s) sent" in zeroshot("rag.parquet", "--neighbours", str(tmp_path / "neighbours.parquet"),
                                           "--rag", "5", "--rag", "10", "--rag", "15").stdout
    moved = neighbours.with_columns(lat=pl.when((pl.col("query_id") == "a.jpg") & (pl.col("rank") == 0))
                                    .then(-pl.col("lat")).otherwise(pl.col("lat")))
    moved.write_parquet(tmp_path / "moved.parquet")
    zeroshot("moved.parquet", "--neighbours", str(tmp_path / "moved.parquet"), "--rag", "5", "--rag", "10",
             "--rag", "15")
    assert sorted(photo_of[r["photo"]] for r in stand_in.requests[9:]) == ["a.jpg"] * 3

    # compile: every answer of both runs is one zeroshot source, plain first, then K = 5, 10, 15.
    out = tmp_path / "candidates.parquet"
    result = CliRunner().invoke(app, ["candidates", "compile", "--out", str(out), "--zeroshot",
                                      str(tmp_path / "plain.parquet"), "--zeroshot", str(tmp_path / "rag.parquet")])
    assert result.exit_code == 0, result.output
    a = pl.read_parquet(out).filter(pl.col("query_id") == "a.jpg")
    assert a["source"].unique().to_list() == ["zeroshot"] and a["rank"].to_list() == list(range(40))
    assert a["lat"].to_list() == [float(f"{k}.{i}") for k in (0, 5, 10, 15) for i in range(10)]
    assert "30 zero-shot answer(s) had no usable coordinates" in result.stdout


def test_rag_refuses_missing_or_unmatched_neighbours_before_any_request(serve, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    write_photo(folder / "a.jpg", (10, 20, 30))
    stand_in, base_url = serve(AnswerEverything([Reply(content='{"latitude": 1, "longitude": 2}')]))
    base = ["candidates", "zeroshot", str(folder), "--model", "m", "--base-url", base_url, "--out",
            str(tmp_path / "out.parquet"), "--cache", str(tmp_path / "cache.sqlite"), "--rag", "5"]
    env = {"GEOLOC_API_KEY": SECRET}
    result = CliRunner().invoke(app, base, env=env)
    assert result.exit_code == 2 and "--neighbours" in result.stderr
    retrieval_only = tmp_path / "retrieval.csv"
    pl.DataFrame({"query_id": ["a.jpg"], "source": ["retrieval"], "rank": [0], "lat": [1.0], "lon": [2.0]}
                 ).write_csv(retrieval_only)
    result = CliRunner().invoke(app, [*base, "--neighbours", str(retrieval_only)], env=env)
    assert result.exit_code == 2 and "no reverse candidates" in result.stderr and "--reverse K" in result.stderr
    others = tmp_path / "others.csv"
    pl.DataFrame({"query_id": ["x/a.jpg"] * 2, "source": ["retrieval", "reverse"], "rank": [0, 0],
                  "lat": [1.0, 3.0], "lon": [2.0, 4.0]}).write_csv(others)
    result = CliRunner().invoke(app, [*base, "--neighbours", str(others)], env=env)
    assert result.exit_code == 2 and "names none of these 1 photos" in result.stderr and "'x/a.jpg'" in result.stderr
    twice = tmp_path / "twice.csv"
    pl.DataFrame({"query_id": ["a.jpg"] * 3, "source": ["retrieval", "retrieval", "reverse"], "rank": [0, 0, 0],
                  "lat": [1.0, 5.0, 3.0], "lon": [2.0, 6.0, 4.0]}).write_csv(twice)
    result = CliRunner().invoke(app, [*base, "--neighbours", str(twice)], env=env)
    assert result.exit_code == 2 and "share a (query, source, rank)" in result.stderr
    assert stand_in.requests == [] and not (tmp_path / "out.parquet").exists()


def test_rag_zero_is_the_plain_prompt_and_georankers_five_are_the_plain_answers(serve, tmp_path):
    """One run with --rag 0 --rag 2; compiled with the neighbours, GeoRanker's --top picks the plain answers."""
    from geoloc.candidates.compile import compile_candidates
    from geoloc.candidates.zeroshot import GEORANKER_PROMPT
    from geoloc.rank.ranking import select_candidates

    folder = tmp_path / "photos"
    folder.mkdir()
    write_photo(folder / "a.jpg", (90, 90, 200))
    stand_in, base_url = serve(AnswerEverything([Reply(content_for=answer_by_k)]))
    neighbours = tmp_path / "neighbours.parquet"
    pl.DataFrame({"query_id": ["a.jpg"] * 6, "source": ["retrieval"] * 3 + ["reverse"] * 3,
                  "rank": [2, 0, 1, 0, 1, 2], "lat": [3.0, 1.0, 2.0, -1.0, -2.0, -3.0], "lon": [0.5] * 6,
                  "text": ["Paris France"] * 6, "ref_uri": ["g/1.jpg", "g/2.jpg", "g/3.jpg"] + [None] * 3,
                  }).write_parquet(neighbours)
    out = tmp_path / "answers.parquet"
    result = CliRunner().invoke(app, ["candidates", "zeroshot", str(folder), "--model", "m", "--base-url", base_url,
                                      "--neighbours", str(neighbours), "--rag", "2", "--rag", "0", "--out", str(out),
                                      "--cache", str(tmp_path / "cache.sqlite")], env={"GEOLOC_API_KEY": SECRET})
    assert result.exit_code == 0, result.output
    plain, rag = sorted(stand_in.requests, key=lambda r: "dissimilar" in r["prompt"])
    assert plain["prompt"] == GEORANKER_PROMPT and named_neighbours(rag["prompt"]) == ([[1.0, 0.5], [2.0, 0.5]],
                                                                                        [[-1.0, 0.5], [-2.0, 0.5]])
    assert {r["n"] for r in stand_in.requests} == {10}
    table = pl.read_parquet(out)
    assert table["rag"].to_list() == [0] * 10 + [2] * 10 and table["rag_retrieval"].to_list() == [None] * 10 + [2] * 10

    candidates, _ = compile_candidates([neighbours], [out])
    scored, negatives = select_candidates(candidates, {"retrieval": 10, "zeroshot": 5, "reverse": 0}, 5)
    assert scored.group_by("source").len().sort("source").rows() == [("retrieval", 3), ("zeroshot", 5)]
    assert scored.filter(pl.col("source") == "zeroshot")["lat"].to_list() == [0.0, 0.1, 0.2, 0.3, 0.4]
