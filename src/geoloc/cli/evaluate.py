"""`geoloc evaluate`: benchmark figures for one predictions file, or several side by side."""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path

import typer
from rich.table import Table

from geoloc.cli.common import clean_errors, console, errors
from geoloc.evaluate import (
    METRIC_KEYS,
    Evaluation,
    accuracy_key,
    breakdown_by,
    evaluate_many,
    radius_rule,
    size_warning,
)
from geoloc.geo import ACCURACY_THRESHOLDS_KM
from geoloc.places.areas import AREAS
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


def _title(distance: str, inclusive: bool) -> str:
    return f"Accuracy ({distance} distance, counted when error {radius_rule(inclusive)} radius)"


def _print_tables(evaluation: Evaluation, distance: str, by_continent: bool) -> None:
    metrics = evaluation.metrics
    summary = Table(title=_title(distance, evaluation.inclusive))
    summary.add_column("photos", justify="right")
    summary.add_column("missing", justify="right")
    for threshold in ACCURACY_THRESHOLDS_KM:
        summary.add_column(f"{threshold:g} km", justify="right")
    for column in AREA_HEADERS:
        summary.add_column(column, justify="right")
    for column in ("median km", "mean km", "GeoScore", "at sea"):
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


COMPARISON_KEYS: tuple[str, ...] = (
    "n", "missing", *(accuracy_key(t) for t in ACCURACY_THRESHOLDS_KM), *(f"acc_{a}" for a in AREAS),
    "median_km", "geoscore",
)
COMPARISON_HEADERS: tuple[str, ...] = (
    "photos", "missing", *(f"{t:g} km" for t in ACCURACY_THRESHOLDS_KM), *AREA_HEADERS, "median km", "GeoScore",
)


def _print_comparison(evaluations: dict[str, Evaluation], distance: str, inclusive: bool) -> None:
    """One row per method, as papers lay out their results."""
    table = Table(title=_title(distance, inclusive))
    table.add_column("method")
    for header in COMPARISON_HEADERS:
        table.add_column(header, justify="right")
    for name, evaluation in evaluations.items():
        table.add_row(name, *(format_metric(key, evaluation.metrics[key]) for key in COMPARISON_KEYS))
    console.print(table)


def method_names(paths: list[Path]) -> list[str]:
    """Each file's stem, or its name as given where two files share a stem."""
    stems = [path.stem for path in paths]
    return [stem if stems.count(stem) == 1 else str(path) for stem, path in zip(stems, paths)]


def _warn_unknown(evaluation: Evaluation, prefix: str) -> None:
    unknown = evaluation.unknown_ids
    if len(unknown):
        shown = ", ".join(repr(i) for i in unknown.head(5).to_list())
        errors.print(f"[yellow]warning:[/] {prefix}{len(unknown)} prediction(s) for ids not in the truth file "
                     f"were not scored: {shown}{' ...' if len(unknown) > 5 else ''}", highlight=False)


PLOT_FORMATS = (".png", ".svg", ".pdf")


def evaluate_command(
    predictions: list[Path] = typer.Argument(
        ..., help="Predictions (CSV or Parquet): image_id, lat, lon. Several files: one row (or JSON line) each."
    ),
    truth: Path | None = typer.Option(
        None, "--truth", help="Truth file: IM2GPS3K / YFCC4K metadata (IMG_ID, LAT, LON), OSV-5M's (id, latitude, "
        "longitude) or image_id, lat, lon. Defaults to the predictions' own true_lat / true_lon columns."
    ),
    distance: Distance = typer.Option(Distance.great_circle, "--distance", help="How distances are measured."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per predictions file instead of tables."),
    by_continent: bool = typer.Option(
        True, "--continents/--no-continents", help="Add the per-continent table (one predictions file only)."
    ),
    inclusive: bool = typer.Option(
        False, "--inclusive", help="Count a photo at a radius when its error is at most the radius (<=, as GeoCLIP) "
        "rather than below it (<, as GeoRanker, G3, OSV-5M, PIGEON)."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Also draw accuracy against radius (1 to 2500 km), a line per file, to this PNG "
        "(or .svg / .pdf)."
    ),
) -> None:
    """Share of photos within 1 / 25 / 200 / 750 / 2500 km and in the right country / region / sub-region / city,
    median and mean error, GeoScore."""
    with clean_errors(TableError):
        if plot is not None and plot.suffix.lower() not in PLOT_FORMATS:
            raise TableError(f"{plot}: --plot writes {', '.join(PLOT_FORMATS)}; got '{plot.suffix}'")
        evaluations = evaluate_many(predictions, truth, method=distance.value, inclusive=inclusive)
    named = dict(zip(method_names(predictions), evaluations))
    if truth is not None and (warning := size_warning(truth, evaluations[0].metrics["n"])):
        errors.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    for path, evaluation in zip(predictions, evaluations):
        _warn_unknown(evaluation, f"{path}: " if len(predictions) > 1 else "")
    if plot is not None:
        from geoloc.evaluate.plot import plot_accuracy_curves

        plot_accuracy_curves(named, plot)
    if as_json:
        for path, evaluation in zip(predictions, evaluations):
            payload: dict[str, object] = {"predictions": str(path)}
            payload.update({key: _json_value(evaluation.metrics[key]) for key in METRIC_KEYS})
            payload["distance"] = distance.value
            payload["radius_rule"] = radius_rule(inclusive)
            typer.echo(json.dumps(payload))
        return
    if len(evaluations) == 1:
        _print_tables(evaluations[0], distance.value, by_continent)
    else:
        _print_comparison(named, distance.value, inclusive)


def register(app: typer.Typer, panel: str) -> None:
    app.command("evaluate", rich_help_panel=panel)(evaluate_command)
