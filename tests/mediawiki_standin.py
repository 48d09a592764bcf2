"""A local stand-in for the MediaWiki action API (Commons and Wikidata), bound to 127.0.0.1.

It answers `action=query` (prop=coordinates|pageprops, titles normalized the way
MediaWiki does, coordinates paged with `continue`) and `action=wbgetentities` (P625
claims), and can misbehave on demand: HTTP 429 or 503 with Retry-After, a maxlag
error or a `badvalue` error for the next requests; plus a fixed latency per answer.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

COORDINATES_PER_RESPONSE = 7
"""By default fewer than a batch, so a full batch always needs continuation."""


@dataclass
class Wiki:
    """What the stand-in knows: category pages (coordinates and/or item) and items (coordinates)."""

    pages: dict[str, dict] = field(default_factory=dict)
    items: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    latency_seconds: float = 0.0
    coordinates_per_response: int = COORDINATES_PER_RESPONSE
    faults: list[str] = field(default_factory=list)
    requests: Counter = field(default_factory=Counter)
    user_agents: set[str] = field(default_factory=set)
    maxlags: set[str] = field(default_factory=set)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self) -> str | None:
        with self.lock:
            return self.faults.pop(0) if self.faults else None


def normalize(title: str) -> str:
    """Underscores to spaces, first letter of the namespace and of the name upper case."""
    namespace, colon, name = title.replace("_", " ").strip().rpartition(":")
    return namespace[:1].upper() + namespace[1:] + colon + name[:1].upper() + name[1:]


def _query(wiki: Wiki, params: dict[str, str]) -> dict:
    asked = params["titles"].split("|")
    normalized = [{"from": t, "to": normalize(t)} for t in asked if normalize(t) != t]
    finals = [normalize(t) for t in asked]
    redirects = [{"from": t, "to": wiki.redirects[t]} for t in finals if t in wiki.redirects]
    finals = [wiki.redirects.get(t, t) for t in finals]
    start = int(params.get("cocontinue", "0"))
    with_coordinates = [t for t in dict.fromkeys(finals) if wiki.pages.get(t, {}).get("coordinates")]
    shown = set(with_coordinates[start:start + wiki.coordinates_per_response])
    pages = []
    for title in dict.fromkeys(finals):
        page = wiki.pages.get(title)
        if page is None:
            pages.append({"ns": 14, "title": title, "missing": True})
            continue
        entry = {"pageid": abs(hash(title)) % 10**8, "ns": 14, "title": title}
        if title in shown:
            lat, lon = page["coordinates"]
            entry["coordinates"] = [{"lat": lat, "lon": lon, "primary": True, "globe": "earth"}]
        if page.get("item") and start == 0:
            entry["pageprops"] = {"wikibase_item": page["item"]}
        pages.append(entry)
    answer: dict = {"batchcomplete": True, "query": {"normalized": normalized, "redirects": redirects, "pages": pages}}
    if start + wiki.coordinates_per_response < len(with_coordinates):
        answer["continue"] = {"cocontinue": str(start + wiki.coordinates_per_response), "continue": "||"}
    return answer


def _entities(wiki: Wiki, params: dict[str, str]) -> dict:
    entities = {}
    for item in params["ids"].split("|"):
        if item not in wiki.items:
            entities[item] = {"id": item, "missing": ""}
            continue
        point = wiki.items[item]
        globe = "http://www.wikidata.org/entity/Q2"
        value = None if point is None else {"latitude": point[0], "longitude": point[1], "globe": globe}
        snak = {"snaktype": "value", "property": "P625", "datavalue": {"value": value, "type": "globecoordinate"}}
        claims = {} if point is None else {"P625": [{"mainsnak": snak}]}
        entities[item] = {"id": item, "type": "item", "claims": claims}
    return {"entities": entities, "success": 1}


def _handler(wiki: Wiki) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
            with wiki.lock:
                wiki.in_flight -= 1
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            params = {k: v[-1] for k, v in parse_qs(urlparse(self.path).query).items()}
            with wiki.lock:
                wiki.requests[params.get("action", "?")] += 1
                wiki.user_agents.add(self.headers.get("User-Agent", ""))
                wiki.maxlags.add(params.get("maxlag", ""))
                wiki.in_flight += 1
                wiki.max_in_flight = max(wiki.max_in_flight, wiki.in_flight)
            self._answer(params)

        def _answer(self, params: dict[str, str]) -> None:
            if wiki.latency_seconds:
                time.sleep(wiki.latency_seconds)
            fault = wiki.next_fault()
            if fault in ("429", "503"):
                self._send(int(fault), {"error": "slow down"}, {"Retry-After": "0"})
            elif fault == "maxlag":
                lagged = {"error": {"code": "maxlag", "info": "Waiting for a database server: 7 seconds lagged."}}
                self._send(200, lagged, {"Retry-After": "0", "X-Database-Lag": "7"})
            elif fault == "badvalue" or params.get("action") not in ("query", "wbgetentities"):
                self._send(200, {"error": {"code": "badvalue", "info": "Unrecognized value for a parameter."}})
            elif params.get("action") == "query":
                self._send(200, _query(wiki, params))
            else:
                self._send(200, _entities(wiki, params))

    return Handler


class StandIn:
    """`with StandIn(wiki) as url:` serves the stand-in on 127.0.0.1 for the block's duration."""

    def __init__(self, wiki: Wiki) -> None:
        self.wiki = wiki
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(wiki))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/w/api.php"

    def __enter__(self) -> str:
        self.thread.start()
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
