"""Prediction files as published projects write them, recognised from their header.

- GeoEstimation's results files (`img_id, gt_lat, predicted_lat, gt_long, predicted_long,
  great_circle_distance`), followed by a blank line and a two-row trailer of the figures
  its script computed (`street acc (1km), …, mean deviation (km)`): the trailer is not a
  photo, but its figures are kept to be compared with ours.
- GeoRanker's and G3's evaluation tables: the benchmark metadata (`IMG_ID, LAT, LON, …`)
  with `LAT_pred, LON_pred` added, the truth and the prediction on each row.
- OSV-5M's `inference.py` output: a CSV without a header, `file name, lat, lon` a line.
- Ours: `image_id, lat, lon`, optionally with `true_lat, true_lon`.

PLONK's evaluation writes no per-photo file (its test step logs the figures only).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from geoloc.tables import TableError, read_table, table_format


@dataclass(frozen=True)
class PredictionLayout:
    """A published way of writing predictions: its columns, as source name -> ours."""

    name: str
    predictions: dict[str, str]
    truth: dict[str, str] | None = None
    """The truth written beside each prediction, where the layout has it."""
    headerless: bool = False

    def describe(self) -> str:
        columns = [*self.predictions, *(c for c in (self.truth or {}) if c not in self.predictions)]
        return f"{self.name} ({', '.join(columns)}{'; no header line' if self.headerless else ''})"


GEOESTIMATION = PredictionLayout(
    "GeoEstimation results",
    {"img_id": "image_id", "predicted_lat": "lat", "predicted_long": "lon"},
    {"img_id": "image_id", "gt_lat": "lat", "gt_long": "lon"},
)
GEORANKER_G3 = PredictionLayout(
    "GeoRanker / G3 evaluation table",
    {"IMG_ID": "image_id", "LAT_pred": "lat", "LON_pred": "lon"},
    {"IMG_ID": "image_id", "LAT": "lat", "LON": "lon"},
)
OURS_WITH_TRUTH = PredictionLayout(
    "geoloc predictions with truth",
    {"image_id": "image_id", "lat": "lat", "lon": "lon"},
    {"image_id": "image_id", "true_lat": "lat", "true_lon": "lon"},
)
OURS = PredictionLayout("geoloc predictions", {"image_id": "image_id", "lat": "lat", "lon": "lon"})
OSV5M_INFERENCE = PredictionLayout(
    "OSV-5M inference output", {"file name": "image_id", "lat": "lat", "lon": "lon"}, headerless=True
)
PREDICTION_LAYOUTS = (GEOESTIMATION, GEORANKER_G3, OURS_WITH_TRUTH, OURS, OSV5M_INFERENCE)
"""Tried in this order: the first whose columns a file has is its layout."""

_BLANK_LINE = re.compile(rb"\r?\n[ \t,]*\r?\n")
_RADIUS = re.compile(r"\((\d+(?:\.\d+)?)\s*km\)")


@dataclass
class PredictionFile:
    """A predictions file read in its layout: our columns, and what else it says."""

    layout: PredictionLayout
    frame: pl.DataFrame
    stated_figures: dict[str, float] = field(default_factory=dict)
    """Figures the file states about itself (GeoEstimation's trailer), by our metric key."""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_header(path: Path) -> list[str]:
    with path.open("rb") as handle:
        first = handle.readline().decode("utf-8", errors="replace").strip()
    return [cell.strip() for cell in first.split(",")]


def stated_figure_key(header: str) -> str | None:
    """Our key for a trailer column: 'city acc (25km)' -> acc_25km, 'mean deviation (km)' -> mean_km."""
    radius = _RADIUS.search(header)
    if radius and "acc" in header:
        return f"acc_{float(radius.group(1)):g}km"
    if header.startswith("mean"):
        return "mean_km"
    if header.startswith("median"):
        return "median_km"
    return None


def _read_with_trailer(path: Path) -> tuple[pl.DataFrame, dict[str, float]]:
    """The rows before the first blank line, and the figures of the trailer after it."""
    data = path.read_bytes()
    blank = _BLANK_LINE.search(data)
    body, trailer = (data, b"") if blank is None else (data[: blank.start() + 1], data[blank.end():])
    frame = pl.read_csv(io.BytesIO(body), infer_schema=False)
    figures: dict[str, float] = {}
    if trailer.strip():
        stated = pl.read_csv(io.BytesIO(trailer), infer_schema=False)
        for column in stated.columns:
            key = stated_figure_key(column.strip())
            value = stated[column][0] if stated.height else None
            if key is not None and value is not None and _is_number(value):
                figures[key] = float(value)
    return frame, figures


def unknown_layout_message(path: Path, columns: list[str]) -> str:
    known = "; ".join(layout.describe() for layout in PREDICTION_LAYOUTS)
    return f"{path}: not a predictions layout geoloc knows (columns {', '.join(columns) or 'none'}); known: {known}"


def read_prediction_file(path: str | Path) -> PredictionFile:
    """Read a predictions file in whichever published layout its header shows."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    if table_format(path) == "csv":
        header = _csv_header(path)
        if set(GEOESTIMATION.predictions) | set(GEOESTIMATION.truth or {}) <= set(header):
            try:
                frame, figures = _read_with_trailer(path)
            except pl.exceptions.PolarsError as error:
                raise TableError(f"{path}: cannot read as csv: {error}") from error
            return PredictionFile(GEOESTIMATION, frame, figures)
        if len(header) == 3 and _is_number(header[1]) and _is_number(header[2]):
            try:
                frame = pl.read_csv(path, has_header=False, new_columns=list(OSV5M_INFERENCE.predictions),
                                    infer_schema=False)
            except pl.exceptions.PolarsError as error:
                raise TableError(f"{path}: cannot read as csv: {error}") from error
            return PredictionFile(OSV5M_INFERENCE, frame)
    frame = read_table(path)
    for layout in PREDICTION_LAYOUTS:
        wanted = set(layout.predictions) | set(layout.truth or {})
        if not layout.headerless and wanted <= set(frame.columns):
            return PredictionFile(layout, frame)
    raise TableError(unknown_layout_message(path, frame.columns))
