"""Reading coordinates out of a language model's free-text answer.

Models answer in every notation: JSON (often in a code fence), "latitude: 48.85,
longitude: 2.35", hemispheres ("33.86° S, 151.21° E"), degrees-minutes-seconds
(48°51'29.6"N 2°17'40.2"E), or a bare pair inside a sentence. Published scripts take
the last two decimal numbers and turn anything else into (0, 0), a real place in the
Gulf of Guinea. Here an answer either yields coordinates that are on the globe, or
none, with the reason. No library extracts coordinates from prose, so this is ours.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_NUMBER = r"\d+(?:[.,]\d+)?"
_MINUS = "-\u2212\u2013"
# One coordinate: optional sign or leading hemisphere, degrees with an optional degree
# sign, optional minutes and seconds (prime marks or ASCII quotes), optional hemisphere.
_COORDINATE = re.compile(
    rf"""
    (?<![\w.])
    (?:(?P<lead>[NSEW])\s*)?
    (?P<sign>[{_MINUS}+])?\s*
    (?P<deg>\d+(?:\.\d+)?)\s*(?P<degmark>°|º|˚|\bdeg(?:rees)?\b)?\s*
    (?:(?P<min>{_NUMBER})\s*(?:′|'|’|\bmin\b)\s*)?
    (?:(?P<sec>{_NUMBER})\s*(?:″|"|”|''|’’|\bsec\b)\s*)?
    (?P<hem>[NSEW](?![a-z])|north\b|south\b|east\b|west\b)?
    """,
    re.VERBOSE | re.IGNORECASE,
)
_LABELLED = re.compile(r"\b(?P<label>lat(?:itude)?|lon(?:gitude)?|lng|long)\b\s*[\"']?\s*[:=]?\s*", re.IGNORECASE)
_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)
_LAT_KEYS = ("lat", "latitude")
_LON_KEYS = ("lon", "lng", "long", "longitude")


@dataclass(frozen=True)
class ParsedAnswer:
    """Coordinates read from an answer, or None for both with the reason in `error`."""

    lat: float | None
    lon: float | None
    error: str | None = None


@dataclass(frozen=True)
class _Coordinate:
    value: float
    axis: str | None  # "lat", "lon" or None when the notation does not say
    marked: bool  # written as a coordinate (decimals, degree sign, minutes, hemisphere)
    start: int
    end: int


def _coordinate_at(match: re.Match[str]) -> _Coordinate | None:
    minutes = float(match["min"].replace(",", ".")) if match["min"] else 0.0
    seconds = float(match["sec"].replace(",", ".")) if match["sec"] else 0.0
    if minutes >= 60 or seconds >= 60:
        return None
    value = float(match["deg"]) + minutes / 60.0 + seconds / 3600.0
    hemisphere = (match["hem"] or match["lead"] or "").upper()[:1]
    negative = bool(match["sign"]) and match["sign"] != "+"
    if hemisphere in ("S", "W"):
        negative = True
    axis = {"N": "lat", "S": "lat", "E": "lon", "W": "lon"}.get(hemisphere)
    marked = bool("." in match["deg"] or match["degmark"] or match["min"] or hemisphere)
    return _Coordinate(-value if negative else value, axis, marked, match.start(), match.end())


def _coordinates(text: str) -> list[_Coordinate]:
    found = []
    for match in _COORDINATE.finditer(text):
        if not match["deg"]:
            continue
        coordinate = _coordinate_at(match)
        if coordinate is not None:
            found.append(coordinate)
    return found


def _number_value(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        found = _coordinates(value)
        return found[0].value if len(found) == 1 else None
    return None


def _from_json(text: str) -> tuple[float, float] | None:
    for block in reversed(_JSON_OBJECT.findall(text)):
        try:
            data = json.loads(block)
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        keys = {str(k).strip().lower(): v for k, v in data.items()}
        lat = next((_number_value(keys[k]) for k in _LAT_KEYS if k in keys), None)
        lon = next((_number_value(keys[k]) for k in _LON_KEYS if k in keys), None)
        if lat is not None and lon is not None:
            return lat, lon
    return None


def _from_labels(text: str) -> tuple[float, float] | None:
    values: dict[str, float] = {}
    for label in _LABELLED.finditer(text):
        following = _COORDINATE.match(text, label.end())
        coordinate = _coordinate_at(following) if following and following["deg"] else None
        if coordinate is not None:
            values["lat" if label["label"].lower().startswith("lat") else "lon"] = coordinate.value
    if "lat" in values and "lon" in values:
        return values["lat"], values["lon"]
    return None


def _from_hemispheres(found: list[_Coordinate]) -> tuple[float, float] | None:
    lats = [c for c in found if c.axis == "lat"]
    lons = [c for c in found if c.axis == "lon"]
    if lats and lons:
        return lats[-1].value, lons[-1].value
    return None


def _from_pairs(text: str, found: list[_Coordinate]) -> tuple[float, float] | None:
    """The last two coordinates written next to each other ("48.85, 2.35"), latitude first."""
    marked = [c for c in found if c.marked]
    for first, second in reversed(list(zip(marked, marked[1:]))):
        if re.fullmatch(r"[\s,;/()\[\]]*", text[first.end:second.start]):
            return first.value, second.value
    return None


def parse_coordinates(answer: str | None) -> ParsedAnswer:
    """Coordinates in an answer, trying the most explicit notations first."""
    if answer is None or not answer.strip():
        return ParsedAnswer(None, None, "empty answer")
    text = answer.replace("\u2212", "-")
    found = _coordinates(text)
    pair = _from_json(text) or _from_labels(text) or _from_hemispheres(found) or _from_pairs(text, found)
    if pair is None:
        return ParsedAnswer(None, None, "no coordinates in the answer")
    lat, lon = pair
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return ParsedAnswer(None, None, f"coordinates out of range: {lat:g}, {lon:g}")
    return ParsedAnswer(lat, lon)
