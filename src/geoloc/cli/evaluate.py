"""`geoloc evaluate`: benchmark figures for one predictions file, or several side by side."""

from __future__ import annotations

import json
import math
from enum import Enum
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from geoloc.cli.common import clean_errors, console, errors
from geoloc.evaluate import (
    METRIC_KEYS,
    Evaluation,
    accuracy_key,
    breakdown_by,
    evaluate_many,
    radius_rule,
    stated_figures_warning,
)
from geoloc.evaluate.intervals import (
    CONFIDENCE,
    DEFAULT_RESAMPLES,
    PairedDifference,
    compare,
    figure_intervals,
    quotable,
    same_photos,
)
from geoloc.evaluate.registry import Identification, identify
from geoloc.geo import ACCURACY_THRESHOLDS_KM
from geoloc.places.areas import AREAS
from geoloc.tables import TableError

Intervals = dict[str, dict[str, list[float]]]
"""Per method, the bootstrap interval of each figure that has one."""

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
        table.add_column(f"{threshold:g} km", justify="right", overflow="fold")
    table.add_column("median km", justify="right", overflow="fold")


def accuracy_cells(metrics: dict) -> list[str]:
    return [format_metric(accuracy_key(t), metrics[accuracy_key(t)]) for t in ACCURACY_THRESHOLDS_KM] + [
        format_metric("median_km", metrics["median_km"])
    ]


def _title(distance: str, inclusive: bool) -> str:
    return f"Accuracy ({distance} distance, counted when error {radius_rule(inclusive)} radius)"


FIGURE_ROWS: tuple[tuple[str, str], ...] = (
    ("n", "photos"),
    ("missing", "missing"),
    *((accuracy_key(t), f"{t:g} km") for t in ACCURACY_THRESHOLDS_KM),
    *((f"acc_{area}", header) for area, header in zip(AREAS, AREA_HEADERS)),
    ("median_km", "median km"),
    ("mean_km", "mean km"),
    ("geoscore", "GeoScore"),
    ("at_sea", "at sea"),
)
"""The figures of a table, a row each (metrics as rows, so that any number of them fits)."""


def format_interval(key: str, interval: list[float] | None) -> str:
    """'[23.93, 27.06]' in the figure's own unit (points for a share), or '' where there is none."""
    if interval is None or not all(math.isfinite(bound) for bound in interval):
        return ""
    low, high = interval
    if key.startswith("acc_"):
        return f"[{100 * low:.2f}, {100 * high:.2f}]"
    return f"[{low:,.1f}, {high:,.1f}]"


def _figure_cell(key: str, evaluation: Evaluation, intervals: dict[str, list[float]] | None) -> str:
    value = format_metric(key, evaluation.metrics[key])
    interval = format_interval(key, (intervals or {}).get(key))
    return f"{value}\n{interval}" if interval else value


def _cell_width(cell: str) -> int:
    return max(len(line) for line in cell.split("\n"))


def figures_table(title: str, named: dict[str, Evaluation], intervals: Intervals | None) -> Table:
    """Metrics as rows and a column per method; an interval, where computed, under each figure."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("figure", overflow="fold")
    for name in named:
        table.add_column(name, justify="right", overflow="fold")
    for key, header in FIGURE_ROWS:
        table.add_row(header, *(_figure_cell(key, e, (intervals or {}).get(name)) for name, e in named.items()))
    return table


def _table_width(named: dict[str, Evaluation], intervals: Intervals | None) -> int:
    """Columns the figures table of `named` needs unsqueezed: its widest cells plus padding."""
    widths = [max(len(header) for _, header in FIGURE_ROWS)]
    for name, evaluation in named.items():
        cells = [_figure_cell(key, evaluation, (intervals or {}).get(name)) for key, _ in FIGURE_ROWS]
        widths.append(max(len(name), *map(_cell_width, cells)))
    return sum(widths) + 3 * len(widths) + 2


def figures_block(name: str, evaluation: Evaluation, intervals: dict[str, list[float]] | None) -> Table:
    """One method's figures, a row each: the figure, its value, its interval (where computed)."""
    table = Table(title=name, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("figure", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    if intervals:
        table.add_column(f"{CONFIDENCE:.0%} interval", justify="right", overflow="fold")
    for key, header in FIGURE_ROWS:
        cells = [header, format_metric(key, evaluation.metrics[key])]
        table.add_row(*cells, *([format_interval(key, intervals.get(key))] if intervals else []))
    return table


def print_figures(named: dict[str, Evaluation], distance: str, inclusive: bool, intervals: Intervals | None) -> None:
    """One table with a column per method when it fits the terminal, else a table per method."""
    title = _title(distance, inclusive) + (f", {CONFIDENCE:.0%} bootstrap intervals" if intervals else "")
    if len(named) > 1 and _table_width(named, intervals) <= console.width:
        console.print(figures_table(title, named, intervals))
        return
    console.print(title, highlight=False)
    for name, evaluation in named.items():
        console.print(figures_block(name, evaluation, (intervals or {}).get(name)))


def _print_continents(evaluation: Evaluation) -> None:
    """The radius figures per continent, in percent with one decimal so that the table fits 80 columns."""
    from geoloc.places import continents

    truth = evaluation.truth
    table = breakdown_by(evaluation, continents(truth["lat"].to_numpy(), truth["lon"].to_numpy()), "continent")
    per_continent = Table(title="Per continent (of the true location), % of photos within each radius",
                          box=box.SIMPLE_HEAD, title_justify="left", collapse_padding=True)
    for header in ("continent", "photos", "missing", *(f"{t:g} km" for t in ACCURACY_THRESHOLDS_KM), "median km"):
        per_continent.add_column(header, justify="left" if header == "continent" else "right", overflow="fold")
    for row in table.iter_rows(named=True):
        shares = [f"{100 * row[accuracy_key(t)]:.1f}" for t in ACCURACY_THRESHOLDS_KM]
        per_continent.add_row(row["continent"], format_metric("n", row["n"]), format_metric("missing", row["missing"]),
                              *shares, format_metric("median_km", row["median_km"]))
    console.print(per_continent)


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


def _comparison_objects(
    named: dict[str, Evaluation], paths: dict[str, Path], resamples: int, seed: int
) -> dict[str, list[dict[str, object]]]:
    """Per method after the first (the baseline), its paired comparisons with it: an object per share."""
    baseline = next(iter(named))
    comparisons: dict[str, list[dict[str, object]]] = {}
    for name, evaluation in list(named.items())[1:]:
        if not same_photos(named[baseline], evaluation):
            errors.print(f"[yellow]warning:[/] {name} and {baseline} are not over the same photos: "
                         "not compared", highlight=False, soft_wrap=True)
            continue
        comparisons[name] = [
            {"baseline": str(paths[baseline]), "predictions": str(paths[name]), "metric": key,
             "difference": difference.difference, "ci": difference.ci, "p_value": difference.p_value,
             "only_baseline": difference.only_baseline, "only_predictions": difference.only_predictions}
            for key, difference in compare(named[baseline], evaluation, resamples, seed).items()
        ]
    return comparisons


def _print_comparisons(baseline: str, comparisons: dict[str, list[dict[str, object]]]) -> None:
    """A sentence a reader can quote per method and share."""
    for name, objects in comparisons.items():
        console.print(f"\n{name} against {baseline} ({CONFIDENCE:.0%} paired bootstrap interval, exact McNemar "
                      "p-value):", highlight=False)
        for item in objects:
            difference = PairedDifference(item["difference"], item["ci"], item["p_value"], item["only_baseline"],
                                          item["only_predictions"])
            console.print(quotable(baseline, name, item["metric"], difference), highlight=False, soft_wrap=True)


def _json_payload(path: Path, evaluation: Evaluation, intervals: dict[str, list[float]], distance: str,
                  benchmark: str | None) -> dict[str, object]:
    payload: dict[str, object] = {"predictions": str(path), "layout": evaluation.layout, "benchmark": benchmark}
    for key in METRIC_KEYS:
        payload[key] = _json_value(evaluation.metrics[key])
        if key in intervals:
            payload[f"{key}_ci"] = [_json_value(bound) for bound in intervals[key]]
    payload["distance"] = distance
    payload["radius_rule"] = radius_rule(evaluation.inclusive)
    return payload


def _warn_about_inputs(
    predictions: list[Path], evaluations: list[Evaluation], identification: Identification | None
) -> None:
    if identification is not None and identification.warning:
        errors.print(f"[yellow]warning:[/] {identification.warning}", highlight=False, soft_wrap=True)
    for path, evaluation in zip(predictions, evaluations):
        _warn_unknown(evaluation, f"{path}: " if len(predictions) > 1 else "")
        if warning := stated_figures_warning(evaluation):
            errors.print(f"[yellow]warning:[/] {path}: {warning}", highlight=False, soft_wrap=True)


def _ordered_with_baseline(predictions: list[Path], baseline: Path | None) -> list[Path]:
    """The files to score, the baseline first (added when it is not among them)."""
    if baseline is None:
        return predictions
    others = [path for path in predictions if path.resolve() != baseline.resolve()]
    return [baseline, *others]


def evaluate_command(
    predictions: list[Path] = typer.Argument(
        ..., help="Predictions (CSV or Parquet) in any published layout: ours (image_id, lat, lon), GeoEstimation's "
        "results, GeoRanker's / G3's table (IMG_ID, LAT, LON, LAT_pred, LON_pred), OSV-5M's inference output. "
        "Several files: compared with the first."
    ),
    truth: Path | None = typer.Option(
        None, "--truth", help="Truth file: IM2GPS3K / YFCC4K metadata (IMG_ID, LAT, LON), OSV-5M's (id, latitude, "
        "longitude) or image_id, lat, lon. Defaults to the truth columns of the predictions file itself."
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
    ci: bool = typer.Option(True, "--ci/--no-ci", help="95% bootstrap intervals in the table (always in --json)."),
    resamples: int = typer.Option(DEFAULT_RESAMPLES, "--resamples", min=100, help="Bootstrap resamples of the photos."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap: the same seed gives the same intervals."),
    baseline: Path | None = typer.Option(
        None, "--baseline", help="Compare every predictions file with this one (default: the first)."
    ),
    swap_latlon: list[Path] = typer.Option(
        [], "--swap-latlon", help="This file's latitude and longitude columns hold each other's values (IM2GPS3K's "
        "metadata before 2020). Repeatable."
    ),
) -> None:
    """Share of photos within 1 / 25 / 200 / 750 / 2500 km and in the right country / region / sub-region / city,
    median and mean error, GeoScore; with intervals, and paired comparisons of several files."""
    predictions = _ordered_with_baseline(predictions, baseline)
    with clean_errors():
        if plot is not None and plot.suffix.lower() not in PLOT_FORMATS:
            raise TableError(f"{plot}: --plot writes {', '.join(PLOT_FORMATS)}; got '{plot.suffix}'")
        evaluations = evaluate_many(predictions, truth, method=distance.value, inclusive=inclusive,
                                    swap_latlon=swap_latlon)
    named = dict(zip(method_names(predictions), evaluations))
    identification = identify(truth or predictions[0], evaluations[0].truth["image_id"])
    _warn_about_inputs(predictions, evaluations, identification)
    if plot is not None:
        from geoloc.evaluate.plot import plot_accuracy_curves

        plot_accuracy_curves(named, plot)
    intervals = {name: figure_intervals(e, resamples, seed) for name, e in named.items()} if ci or as_json else None
    comparisons = _comparison_objects(named, dict(zip(named, predictions)), resamples, seed)
    benchmark = identification.label if identification is not None else None
    if as_json:
        for (name, evaluation), path in zip(named.items(), predictions):
            payload = _json_payload(path, evaluation, intervals[name], distance.value, benchmark)
            if name in comparisons:
                payload["comparisons"] = comparisons[name]
            typer.echo(json.dumps(payload))
        return
    print_figures(named, distance.value, inclusive, intervals)
    sources = "; ".join(f"{name}: {e.layout}" for name, e in named.items())
    console.print(f"Read as {sources}." + (f" Truth: {benchmark}." if benchmark else ""), highlight=False)
    _print_comparisons(next(iter(named)), comparisons)
    if len(evaluations) == 1 and by_continent and evaluations[0].metrics["n"]:
        _print_continents(evaluations[0])


def register(app: typer.Typer, panel: str) -> None:
    app.command("evaluate", rich_help_panel=panel)(evaluate_command)
