"""`geoloc evaluate`: benchmark figures for a predictions file."""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path

import typer
from rich.table import Table

from geoloc.cli.common import clean_errors, console, errors
from geoloc.evaluate import METRIC_KEYS, Evaluation, accuracy_key, breakdown_by, evaluate_files, radius_rule
from geoloc.geo import ACCURACY_THRESHOLDS_KM
from geoloc.tables import TableError

AREA_HEADERS = ("country", "region", "sub-region", "city")
"""Table headers of the acc_<area> figures, in AREAS order."""


class Distance(str, Enum):
    great_circle = "great-circle"
    geodesic = "geodesic"


def _json_value(value: float | int | None) -> float | int | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_metric(key: str, value: float | int | None) -> str:
    if value is None:
        return "-"
    if key.startswith("acc_"):
        return f"{100 * value:.2f}%"
    if key.endswith("_km") or key == "geoscore":
        return f"{value:,.1f}"
    return f"{value:,}"


def accuracy_columns(table: Table) -> None:
    """Columns for accuracy_cells: one per radius, then the median error."""
    for threshold in ACCURACY_THRESHOLDS_KM:
        table.add_column(f"{threshold:g} km", justify="right")
    table.add_column("median km", justify="right")


def accuracy_cells(metrics: dict) -> list[str]:
    return [format_metric(accuracy_key(t), metrics[accuracy_key(t)]) for t in ACCURACY_THRESHOLDS_KM] + [
        format_metric("median_km", metrics["median_km"])
    ]


def _print_tables(evaluation: Evaluation, distance: str, by_continent: bool) -> None:
    metrics = evaluation.metrics
    rule = radius_rule(evaluation.inclusive)
    summary = Table(title=f"Accuracy ({distance} distance, counted when error {rule} radius)")
    summary.add_column("photos", justify="right")
    summary.add_column("missing", justify="right")
    for threshold in ACCURACY_THRESHOLDS_KM:
        summary.add_column(f"{threshold:g} km", justify="right")
    for column in AREA_HEADERS:
        summary.add_column(column, justify="right")
    for column in ("median km", "mean km", "GeoScore"):
        summary.add_column(column, justify="right")
    summary.add_row(*(format_metric(key, metrics[key]) for key in METRIC_KEYS if key != "unknown"))
    console.print(summary)
    if not by_continent or not metrics["n"]:
        return
    from geoloc.places import continents

    truth = evaluation.truth
    table = breakdown_by(evaluation, continents(truth["lat"].to_numpy(), truth["lon"].to_numpy()), "continent")
    per_continent = Table(title="Per continent (of the true location)")
    per_continent.add_column("continent")
    per_continent.add_column("photos", justify="right")
    per_continent.add_column("missing", justify="right")
    accuracy_columns(per_continent)
    for row in table.iter_rows(named=True):
        cells = [row["continent"], format_metric("n", row["n"]), format_metric("missing", row["missing"])]
        per_continent.add_row(*cells, *accuracy_cells(row))
    console.print(per_continent)


def evaluate_command(
    predictions: Path = typer.Argument(..., help="Predictions (CSV or Parquet): image_id, lat, lon."),
    truth: Path | None = typer.Option(
        None, "--truth", help="Truth file: IM2GPS3K / YFCC4K metadata (IMG_ID, LAT, LON) or image_id, lat, lon. "
        "Defaults to the predictions' own true_lat / true_lon columns."
    ),
    distance: Distance = typer.Option(Distance.great_circle, "--distance", help="How distances are measured."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (the last line) instead of tables."),
    by_continent: bool = typer.Option(True, "--continents/--no-continents", help="Add the per-continent table."),
    inclusive: bool = typer.Option(
        False, "--inclusive", help="Count a photo at a radius when its error is at most the radius (<=, as GeoCLIP) "
        "rather than below it (<, as GeoRanker, G3, OSV-5M, PIGEON)."
    ),
) -> None:
    """Share of photos within 1 / 25 / 200 / 750 / 2500 km, median and mean error, GeoScore."""
    with clean_errors(TableError):
        evaluation = evaluate_files(predictions, truth, method=distance.value, inclusive=inclusive)
    unknown = evaluation.unknown_ids
    if len(unknown):
        shown = ", ".join(repr(i) for i in unknown.head(5).to_list())
        errors.print(f"[yellow]warning:[/] {len(unknown)} prediction(s) for ids not in the truth file "
                     f"were not scored: {shown}{' ...' if len(unknown) > 5 else ''}", highlight=False)
    if as_json:
        payload = {key: _json_value(evaluation.metrics[key]) for key in METRIC_KEYS}
        payload["distance"] = distance.value
        payload["radius_rule"] = radius_rule(inclusive)
        typer.echo(json.dumps(payload))
        return
    _print_tables(evaluation, distance.value, by_continent)


def register(app: typer.Typer, panel: str) -> None:
    app.command("evaluate", rich_help_panel=panel)(evaluate_command)
