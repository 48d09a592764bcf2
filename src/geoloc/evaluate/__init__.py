"""Benchmark evaluation: how far predictions are from the truth, and in the right area or not.

Reads truth files in the public IM2GPS3K / YFCC4K metadata layout (IMG_ID, LAT, LON),
OSV-5M's (id, latitude, longitude, with its own area labels) or ours (image_id, lat, lon),
and predictions in the layouts published projects write (geoloc.evaluate.layouts).
Every photo of the truth file counts: a photo without a prediction is a miss at every
radius and in every area and scores 0, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from numpy.typing import NDArray

from geoloc.evaluate.layouts import OSV5M_INFERENCE, OURS, PredictionLayout, read_prediction_file
from geoloc.geo import ACCURACY_THRESHOLDS_KM, CoordinateStatus, DistanceMethod, coordinate_status, distance_km
from geoloc.places.areas import AREAS, OSV5M_LABEL_COLUMNS, accuracies_of_hits, area_hits, area_labels
from geoloc.places.land import sea_flags
from geoloc.tables import TRUTH_LAYOUTS, TableError, as_float_column, describe_ids, read_table, select_layout

GEOSCORE_MAX = 5000.0
GEOSCORE_SCALE_KM = 1492.7
"""GeoGuessr's score: 5000 at the exact spot, decaying with this scale in km."""

OSV5M_TRUTH_LAYOUT = {"id": "image_id", "latitude": "lat", "longitude": "lon"}
BENCHMARK_TRUTH_LAYOUTS = [*TRUTH_LAYOUTS, OSV5M_TRUTH_LAYOUT]


def accuracy_key(threshold_km: float) -> str:
    return f"acc_{threshold_km:g}km"


METRIC_KEYS: tuple[str, ...] = (
    "n",
    "missing",
    "unknown",
    *(accuracy_key(t) for t in ACCURACY_THRESHOLDS_KM),
    *(f"acc_{area}" for area in AREAS),
    "median_km",
    "mean_km",
    "geoscore",
    "at_sea",
)


@dataclass
class Evaluation:
    """The figures of one evaluation, and the per-photo distances behind them."""

    metrics: dict[str, float | int | None]
    truth: pl.DataFrame
    """image_id, lat, lon and distance_km (null where the photo has no prediction); with
    areas, hit_<area> too (see hit_column)."""
    unknown_ids: pl.Series = field(default_factory=lambda: pl.Series("image_id", [], dtype=pl.Utf8))
    """Ids that have a prediction but are not in the truth file: reported, never scored."""
    inclusive: bool = False
    """The radius rule the figures were counted with (see metrics_from_distances)."""
    layout: str | None = None
    """The layout the predictions file was read in (geoloc.evaluate.layouts)."""
    stated_figures: dict[str, float] = field(default_factory=dict)
    """Figures the predictions file states about itself (GeoEstimation's trailer)."""


def _reject_duplicates(frame: pl.DataFrame, path: Path, what: str) -> None:
    # Equal ids have equal hashes, so all-distinct 64-bit hashes prove the ids distinct,
    # several times faster than comparing strings; the exact search runs only otherwise.
    if frame["image_id"].hash().n_unique() == frame.height:
        return
    duplicated = frame.filter(pl.col("image_id").is_duplicated())["image_id"].unique(maintain_order=True)
    if len(duplicated):
        raise TableError(f"{path}: {len(duplicated)} image id(s) appear more than once in the {what}: "
                         f"{describe_ids(duplicated)}")


def _impossible(lat: NDArray[np.float64], lon: NDArray[np.float64], present: NDArray[np.bool_]) -> NDArray[np.bool_]:
    return (coordinate_status(lat, lon) == CoordinateStatus.BAD_COORDINATES) & present


def _reject_impossible(frame: pl.DataFrame, path: Path, what: str) -> None:
    """An error naming the rows with impossible coordinates (empty ones are not judged here).

    When swapping latitude and longitude makes every row possible (IM2GPS3K's metadata
    had its LAT and LON headers swapped until 2020), the error says so.
    """
    lat, lon = frame["lat"].to_numpy(), frame["lon"].to_numpy()
    present = _has_coordinates(frame).to_numpy()
    bad = _impossible(lat, lon, present)
    if bad.any():
        ids = frame.filter(pl.Series(bad))["image_id"]
        hint = ""
        if not _impossible(lon, lat, present).any():
            hint = (f"; swapping the latitude and longitude columns makes every row possible: "
                    f"if they are swapped, pass --swap-latlon {path}")
        raise TableError(f"{path}: {bad.sum()} {what} row(s) have impossible coordinates "
                         f"(|lat| > 90, |lon| > 180 or infinite): {describe_ids(ids)}{hint}")


def _id_lat_lon(frame: pl.DataFrame, path: Path, layouts: list[dict[str, str]], swap: bool = False) -> pl.DataFrame:
    frame = select_layout(frame, path, layouts)
    if swap:
        frame = frame.rename({"lat": "lon", "lon": "lat"}).select("image_id", "lat", "lon")
    frame = frame.with_columns(pl.col("image_id").cast(pl.Utf8))
    for column in ("lat", "lon"):
        frame = as_float_column(frame, column, "image_id", path)
    return frame


def truth_table(
    frame: pl.DataFrame, path: Path, layouts: list[dict[str, str]] = BENCHMARK_TRUTH_LAYOUTS, swap: bool = False
) -> pl.DataFrame:
    """Validated truth: unique ids, every photo with real coordinates.

    OSV-5M's own area labels, where the file has them, come along as columns named by
    area (null where the file says "nan").
    """
    labels = [
        pl.col(column).cast(pl.Utf8).replace("nan", None).alias(area)
        for column, area in OSV5M_LABEL_COLUMNS.items()
        if column in frame.columns
    ]
    truth = pl.concat([_id_lat_lon(frame, path, layouts, swap), frame.select(labels)], how="horizontal")
    _reject_duplicates(truth, path, "truth")
    missing = truth.filter(pl.col("lat").is_null() | pl.col("lon").is_null())["image_id"]
    if len(missing):
        raise TableError(f"{path}: {len(missing)} truth row(s) have no coordinates: {describe_ids(missing)}")
    _reject_impossible(truth, path, "truth")
    return truth


def _has_coordinates(frame: pl.DataFrame) -> pl.Series:
    return frame["lat"].is_not_null() & frame["lon"].is_not_null()


def prediction_table(
    frame: pl.DataFrame, path: Path, layout: PredictionLayout = OURS, ids_known_unique: bool = False, swap: bool = False
) -> pl.DataFrame:
    """Validated predictions, a row per row of the file: unique ids (checked unless known).

    A row with an empty lat or lon means 'no prediction'; both are then null.
    """
    predictions = _id_lat_lon(frame, path, [layout.predictions], swap)
    if not ids_known_unique:
        _reject_duplicates(predictions, path, "predictions")
    present = _has_coordinates(predictions)
    if not present.all():
        predictions = predictions.with_columns(pl.when(present).then(pl.col("lat", "lon")))
    _reject_impossible(predictions, path, "prediction")
    return predictions


def load_truth(path: str | Path, swap: bool = False) -> pl.DataFrame:
    """Read a truth file (IM2GPS3K / YFCC4K metadata or our schema) as image_id, lat, lon.

    `swap`: the file's latitude and longitude columns hold each other's values.
    """
    path = Path(path)
    return truth_table(read_table(path), path, swap=swap)


@dataclass
class LoadedPredictions:
    """A predictions file read and validated: its predictions, its own truth if it has one, its layout."""

    predictions: pl.DataFrame
    truth: pl.DataFrame | None
    layout: PredictionLayout
    stated_figures: dict[str, float]


def load_predictions(path: str | Path, swap: bool = False) -> LoadedPredictions:
    """Read a predictions file in any known layout; also its own truth where the layout has one.

    `swap`: every latitude column of the file holds longitudes and the other way round.
    """
    path = Path(path)
    read = read_prediction_file(path)
    embedded = None
    if read.layout.truth is not None:
        embedded = truth_table(read.frame, path, [read.layout.truth], swap=swap)
    predictions = prediction_table(read.frame, path, read.layout, ids_known_unique=embedded is not None, swap=swap)
    return LoadedPredictions(predictions, embedded, read.layout, read.stated_figures)


def radius_rule(inclusive: bool) -> str:
    """How a photo counts at a radius: '<' (GeoRanker, G3, OSV-5M, PIGEON) or '<=' (GeoCLIP)."""
    return "<=" if inclusive else "<"


def metrics_from_distances(
    distances_km: NDArray[np.float64], inclusive: bool = False
) -> dict[str, float | int | None]:
    """Benchmark figures from one distance per truth photo, NaN where there is no prediction.

    A photo counts at a radius when its error is below it, or at most it with `inclusive`.
    """
    distances_km = np.asarray(distances_km, dtype=np.float64)
    n = int(distances_km.size)
    # The m predicted distances, moved before the missing ones (NaN made +inf) by one
    # partial sort that also places the median: a slice, not a boolean-indexed copy.
    ordered = np.nan_to_num(distances_km, nan=np.inf, posinf=np.inf)
    m = n - int(np.count_nonzero(np.isnan(distances_km)))
    middle = [(m - 1) // 2, m // 2]
    if m:
        ordered.partition([*middle, m - 1])
    predicted = ordered[:m]
    within = np.less_equal if inclusive else np.less
    metrics: dict[str, float | int | None] = {"n": n, "missing": n - int(predicted.size), "unknown": 0}
    for threshold in ACCURACY_THRESHOLDS_KM:
        metrics[accuracy_key(threshold)] = float(np.count_nonzero(within(predicted, threshold)) / n) if n else None
    metrics["median_km"] = float((predicted[middle[0]] + predicted[middle[1]]) / 2) if m else None
    metrics["mean_km"] = float(predicted.mean()) if m else None
    scores = np.multiply(predicted, -1.0 / GEOSCORE_SCALE_KM)
    metrics["geoscore"] = float(GEOSCORE_MAX * np.exp(scores, out=scores).sum() / n) if n else None
    return metrics


def evaluate(
    predictions: pl.DataFrame,
    truth: pl.DataFrame,
    method: DistanceMethod = "great-circle",
    inclusive: bool = False,
    areas: bool = True,
) -> Evaluation:
    """Score validated predictions against validated truth (see load_truth / load_predictions).

    With `areas`, also the country / region / sub-region / city accuracies (OSV-5M's rule,
    geoloc.places.areas), truth labels from the truth table where it has them; without,
    those figures are None (they cost a nearest-place search per photo).
    """
    joined, unknown = _join_predictions(truth, predictions)
    distances = distance_km(
        joined["lat"].to_numpy(),
        joined["lon"].to_numpy(),
        joined["pred_lat"].to_numpy(),
        joined["pred_lon"].to_numpy(),
        method=method,
    )
    metrics = metrics_from_distances(distances, inclusive=inclusive)
    metrics["unknown"] = len(unknown)
    metrics["at_sea"] = _predictions_at_sea(joined) if areas else None
    scored = joined.select("image_id", "lat", "lon").with_columns(
        pl.Series("distance_km", distances).fill_nan(None)
    )
    if areas:
        hits = _area_hits(joined)
        metrics.update(accuracies_of_hits(hits))
        scored = pl.concat([scored, hits.rename({area: hit_column(area) for area in AREAS})], how="horizontal")
    else:
        metrics.update({f"acc_{area}": None for area in AREAS})
    return Evaluation(metrics=metrics, truth=scored, unknown_ids=unknown, inclusive=inclusive)


def _id_key() -> pl.Expr:
    """A 64-bit hash of each image id, the join key of _join_predictions."""
    return pl.col("image_id").hash().alias("_key")


def _join_predictions(truth: pl.DataFrame, predictions: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series]:
    """The truth rows in order with pred_lat / pred_lon (null where none), and the prediction ids not in the truth.

    Rows already paired (a predictions file with its own truth columns, or one written in
    the truth's order) need no join. Otherwise they are joined on 64-bit hashes of the ids,
    two to three times faster than on the strings, and every match then proved by
    comparing the ids themselves; should two ids share a hash, the join is redone on the
    strings.
    """
    if predictions.height == truth.height and (predictions["image_id"] == truth["image_id"]).all(ignore_nulls=False):
        paired = truth.with_columns(predictions["lat"].alias("pred_lat"), predictions["lon"].alias("pred_lon"))
        return paired, pl.Series("image_id", [], dtype=pl.Utf8)
    predictions = predictions.filter(_has_coordinates(predictions))
    keyed = predictions.select(
        _id_key(),
        pl.col("image_id").alias("_pred_id"),
        pl.col("lat").alias("pred_lat"),
        pl.col("lon").alias("pred_lon"),
    )
    truth_keys = truth.with_columns(_id_key())
    joined = truth_keys.join(keyed, on="_key", how="left", maintain_order="left")
    matched = joined["_pred_id"].is_not_null()
    proven = joined.height == truth.height and bool((~matched | (joined["_pred_id"] == joined["image_id"])).all())
    if proven:
        if matched.sum() == predictions.height:  # ids are unique on both sides: every prediction is scored
            unknown = pl.Series("image_id", [], dtype=pl.Utf8)
        else:
            unknown = keyed.join(truth_keys.select("_key"), on="_key", how="anti")["_pred_id"].alias("image_id")
        return joined.drop("_key", "_pred_id"), unknown
    by_id = keyed.drop("_key").rename({"_pred_id": "image_id"})
    joined = truth.join(by_id, on="image_id", how="left", maintain_order="left")
    return joined, by_id.join(truth.select("image_id"), on="image_id", how="anti")["image_id"]


def with_area_labels(truth: pl.DataFrame) -> pl.DataFrame:
    """The truth with a label column per area: its own where the file has them, else OSV-5M's rule."""
    missing = [area for area in AREAS if area not in truth.columns]
    if not missing:
        return truth
    computed = area_labels(truth["lat"].to_numpy(), truth["lon"].to_numpy()).select(missing)
    return pl.concat([truth, computed], how="horizontal")


def _area_hits(joined: pl.DataFrame) -> pl.DataFrame:
    """Per photo and area, truth rows joined with pred_lat / pred_lon: a hit or not (null: not counted)."""
    truth_labels = with_area_labels(joined).select(AREAS)
    predicted = joined.select(pl.col("pred_lat", "pred_lon").fill_null(np.nan))
    return area_hits(predicted["pred_lat"].to_numpy(), predicted["pred_lon"].to_numpy(), truth_labels)


def hit_column(area: str) -> str:
    """The column of Evaluation.truth telling, per photo, whether its predicted `area` is right."""
    return f"hit_{area}"


def _predictions_at_sea(joined: pl.DataFrame) -> int | None:
    """How many predictions lie in the open sea (geoloc.places.land); None without the installed mask."""
    predicted = joined.select("pred_lat", "pred_lon").drop_nulls()
    flags = sea_flags(predicted["pred_lat"].to_numpy(), predicted["pred_lon"].to_numpy())
    return None if flags is None else int(flags.sum())


def evaluate_files(
    predictions_path: str | Path,
    truth_path: str | Path | None = None,
    method: DistanceMethod = "great-circle",
    inclusive: bool = False,
    areas: bool = True,
) -> Evaluation:
    """Evaluate a predictions file against a truth file, or against the truth it carries itself."""
    return evaluate_many([predictions_path], truth_path, method=method, inclusive=inclusive, areas=areas)[0]


def _file_names_as_ids(predictions: pl.DataFrame, truth: pl.DataFrame) -> pl.DataFrame:
    """Predictions keyed by image file name ('123.jpg') matched to a truth keyed by bare id ('123').

    OSV-5M's inference writes file names; its test metadata's ids have no extension.
    """
    if truth["image_id"].str.ends_with(".jpg").any():
        return predictions
    return predictions.with_columns(pl.col("image_id").str.strip_suffix(".jpg"))


def evaluate_many(
    predictions_paths: list[str | Path],
    truth_path: str | Path | None = None,
    method: DistanceMethod = "great-circle",
    inclusive: bool = False,
    areas: bool = True,
    swap_latlon: Collection[str | Path] = (),
) -> list[Evaluation]:
    """Evaluate several predictions files (methods side by side) against one truth file, read once.

    `swap_latlon`: files whose latitude and longitude columns hold each other's values.
    """
    swapped = {Path(path).resolve() for path in swap_latlon}
    given = {Path(path).resolve() for path in [*predictions_paths, *([truth_path] if truth_path else [])]}
    if stray := [str(path) for path in swap_latlon if Path(path).resolve() not in given]:
        raise TableError(f"--swap-latlon {', '.join(stray)}: not among the files evaluated")
    truth = None
    evaluations = []
    for predictions_path in predictions_paths:
        loaded = load_predictions(predictions_path, swap=Path(predictions_path).resolve() in swapped)
        if truth_path is not None:
            if truth is None:  # read, and labelled by area, once for every file
                truth = load_truth(truth_path, swap=Path(truth_path).resolve() in swapped)
                truth = with_area_labels(truth) if areas else truth
            scored_against = truth
        elif loaded.truth is not None:
            scored_against = loaded.truth
        else:
            raise TableError(f"{predictions_path}: no truth given and no truth columns in the file "
                             f"({loaded.layout.name}); pass --truth with the benchmark's metadata file")
        predictions = loaded.predictions
        if loaded.layout is OSV5M_INFERENCE:
            predictions = _file_names_as_ids(predictions, scored_against)
        evaluation = evaluate(predictions, scored_against, method=method, inclusive=inclusive, areas=areas)
        evaluation.layout = loaded.layout.name
        evaluation.stated_figures = loaded.stated_figures
        evaluations.append(evaluation)
    return evaluations


def stated_figures_warning(evaluation: Evaluation) -> str | None:
    """A warning when the figures a file states about itself differ from ours, else None.

    Accuracies differ when they are more than one photo apart (a photo within a metre of
    a radius may fall either side with another distance formula); the mean error when
    more than 0.5% apart (the sphere and the ellipsoid differ by up to that much).
    """
    n = evaluation.metrics["n"]
    differing = []
    for key, stated in evaluation.stated_figures.items():
        ours = evaluation.metrics.get(key)
        if ours is None:
            continue
        tolerance = (1 / n + 1e-6) if key.startswith("acc_") else 0.005 * abs(stated) + 0.01
        if abs(ours - stated) > tolerance:
            differing.append(f"{key} states {stated:g}, computed {ours:.6g}")
    if not differing:
        return None
    return "the figures the file states differ from the ones computed: " + "; ".join(differing)


def accuracy_curve(
    distances_km: NDArray[np.float64], radii_km: NDArray[np.float64], inclusive: bool = False
) -> NDArray[np.float64]:
    """Share of the photos counted at each radius (NaN distance: no prediction, a miss everywhere)."""
    distances_km = np.asarray(distances_km, dtype=np.float64)
    if not distances_km.size:
        return np.full(np.shape(radii_km), np.nan)
    ordered = np.sort(distances_km[~np.isnan(distances_km)])
    counted = np.searchsorted(ordered, radii_km, side="right" if inclusive else "left")
    return counted / distances_km.size


def breakdown_by(evaluation: Evaluation, groups: NDArray[np.object_], name: str) -> pl.DataFrame:
    """The same figures per group of truth photos (say, per continent), largest group first.

    Counted with the evaluation's own radius rule, so the groups add up to the whole.
    """
    distances = evaluation.truth["distance_km"].fill_null(np.nan).to_numpy()
    groups = np.asarray(groups, dtype=object)
    rows = []
    for group in np.unique(groups):
        metrics = metrics_from_distances(distances[groups == group], inclusive=evaluation.inclusive)
        del metrics["unknown"]
        rows.append({name: str(group), **metrics})
    return pl.DataFrame(rows).sort(["n", name], descending=[True, False])
