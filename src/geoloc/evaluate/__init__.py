"""Benchmark evaluation: how far predictions are from the truth, and in the right area or not.

Reads truth files in the public IM2GPS3K / YFCC4K metadata layout (IMG_ID, LAT, LON),
OSV-5M's (id, latitude, longitude, with its own area labels) or ours (image_id, lat, lon),
and predictions in the predictions schema. Every photo of the truth file counts: a photo
without a prediction is a miss at every radius and in every area and scores 0, never
silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from numpy.typing import NDArray

from geoloc.geo import ACCURACY_THRESHOLDS_KM, CoordinateStatus, DistanceMethod, coordinate_status, distance_km
from geoloc.places.areas import AREAS, OSV5M_LABEL_COLUMNS, area_accuracies, area_labels
from geoloc.places.land import sea_flags
from geoloc.tables import TRUTH_LAYOUTS, TableError, as_float_column, describe_ids, read_table, select_layout

GEOSCORE_MAX = 5000.0
GEOSCORE_SCALE_KM = 1492.7
"""GeoGuessr's score: 5000 at the exact spot, decaying with this scale in km."""

OSV5M_TRUTH_LAYOUT = {"id": "image_id", "latitude": "lat", "longitude": "lon"}
BENCHMARK_TRUTH_LAYOUTS = [*TRUTH_LAYOUTS, OSV5M_TRUTH_LAYOUT]
PREDICTION_LAYOUTS = [{"image_id": "image_id", "lat": "lat", "lon": "lon"}]
BENCHMARK_SIZES = {"im2gps3k_places365.csv": 2997, "yfcc4k_places365.csv": 4536}
"""Rows of the public benchmark metadata files, by file name: IM2GPS3K, YFCC4K."""
EMBEDDED_TRUTH_LAYOUTS = [{"image_id": "image_id", "true_lat": "lat", "true_lon": "lon"}]


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
    """image_id, lat, lon and distance_km (null where the photo has no prediction)."""
    unknown_ids: pl.Series = field(default_factory=lambda: pl.Series("image_id", [], dtype=pl.Utf8))
    """Ids that have a prediction but are not in the truth file: reported, never scored."""
    inclusive: bool = False
    """The radius rule the figures were counted with (see metrics_from_distances)."""


def _reject_duplicates(frame: pl.DataFrame, path: Path, what: str) -> None:
    # Equal ids have equal hashes, so all-distinct 64-bit hashes prove the ids distinct,
    # several times faster than comparing strings; the exact search runs only otherwise.
    if frame["image_id"].hash().n_unique() == frame.height:
        return
    duplicated = frame.filter(pl.col("image_id").is_duplicated())["image_id"].unique(maintain_order=True)
    if len(duplicated):
        raise TableError(f"{path}: {len(duplicated)} image id(s) appear more than once in the {what}: "
                         f"{describe_ids(duplicated)}")


def _reject_impossible(frame: pl.DataFrame, path: Path, what: str) -> None:
    """An error naming the rows with impossible coordinates (empty ones are not judged here)."""
    status = coordinate_status(frame["lat"].to_numpy(), frame["lon"].to_numpy())
    bad = (status == CoordinateStatus.BAD_COORDINATES) & _has_coordinates(frame).to_numpy()
    if bad.any():
        ids = frame.filter(pl.Series(bad))["image_id"]
        raise TableError(f"{path}: {bad.sum()} {what} row(s) have impossible coordinates "
                         f"(|lat| > 90, |lon| > 180 or infinite): {describe_ids(ids)}")


def _id_lat_lon(frame: pl.DataFrame, path: Path, layouts: list[dict[str, str]]) -> pl.DataFrame:
    frame = select_layout(frame, path, layouts)
    frame = frame.with_columns(pl.col("image_id").cast(pl.Utf8))
    for column in ("lat", "lon"):
        frame = as_float_column(frame, column, "image_id", path)
    return frame


def size_warning(truth_path: str | Path, rows: int) -> str | None:
    """A warning when a file named like a public benchmark's metadata has another row count.

    Figures over a partial (or padded) copy are not the benchmark's; they are still computed.
    """
    name = Path(truth_path).name
    expected = BENCHMARK_SIZES.get(name.lower())
    if expected is None or rows == expected:
        return None
    return (f"{truth_path}: {rows:,} photos, but {name} has {expected:,}: "
            "the figures are not comparable with published ones")


def truth_table(
    frame: pl.DataFrame, path: Path, layouts: list[dict[str, str]] = BENCHMARK_TRUTH_LAYOUTS
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
    truth = pl.concat([_id_lat_lon(frame, path, layouts), frame.select(labels)], how="horizontal")
    _reject_duplicates(truth, path, "truth")
    missing = truth.filter(pl.col("lat").is_null() | pl.col("lon").is_null())["image_id"]
    if len(missing):
        raise TableError(f"{path}: {len(missing)} truth row(s) have no coordinates: {describe_ids(missing)}")
    _reject_impossible(truth, path, "truth")
    return truth


def _has_coordinates(frame: pl.DataFrame) -> pl.Series:
    return frame["lat"].is_not_null() & frame["lon"].is_not_null()


def prediction_table(frame: pl.DataFrame, path: Path, ids_known_unique: bool = False) -> pl.DataFrame:
    """Validated predictions, a row per row of the file: unique ids (checked unless known).

    A row with an empty lat or lon means 'no prediction'; both are then null.
    """
    predictions = _id_lat_lon(frame, path, PREDICTION_LAYOUTS)
    if not ids_known_unique:
        _reject_duplicates(predictions, path, "predictions")
    present = _has_coordinates(predictions)
    if not present.all():
        predictions = predictions.with_columns(pl.when(present).then(pl.col("lat", "lon")))
    _reject_impossible(predictions, path, "prediction")
    return predictions


def load_truth(path: str | Path) -> pl.DataFrame:
    """Read a truth file (IM2GPS3K / YFCC4K metadata or our schema) as image_id, lat, lon."""
    path = Path(path)
    return truth_table(read_table(path), path)


def load_predictions(path: str | Path) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Read a predictions file; also its embedded truth when it has true_lat / true_lon."""
    path = Path(path)
    frame = read_table(path)
    embedded = None
    if {"true_lat", "true_lon"} <= set(frame.columns):
        embedded = truth_table(frame, path, EMBEDDED_TRUTH_LAYOUTS)
    return prediction_table(frame, path, ids_known_unique=embedded is not None), embedded


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
    metrics.update(_area_figures(joined, areas))
    metrics["at_sea"] = _predictions_at_sea(joined) if areas else None
    scored = joined.select("image_id", "lat", "lon").with_columns(
        pl.Series("distance_km", distances).fill_nan(None)
    )
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


def _area_figures(joined: pl.DataFrame, areas: bool) -> dict[str, float | None]:
    """acc_<area> of truth rows joined with pred_lat / pred_lon (null where no prediction)."""
    if not areas:
        return {f"acc_{area}": None for area in AREAS}
    truth_labels = with_area_labels(joined).select(AREAS)
    predicted = joined.select(pl.col("pred_lat", "pred_lon").fill_null(np.nan))
    return area_accuracies(predicted["pred_lat"].to_numpy(), predicted["pred_lon"].to_numpy(), truth_labels)


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
    """Evaluate a predictions file against a truth file, or against its own true_lat/true_lon."""
    return evaluate_many([predictions_path], truth_path, method=method, inclusive=inclusive, areas=areas)[0]


def evaluate_many(
    predictions_paths: list[str | Path],
    truth_path: str | Path | None = None,
    method: DistanceMethod = "great-circle",
    inclusive: bool = False,
    areas: bool = True,
) -> list[Evaluation]:
    """Evaluate several predictions files (methods side by side) against one truth file, read once."""
    truth = None
    evaluations = []
    for predictions_path in predictions_paths:
        predictions, embedded_truth = load_predictions(predictions_path)
        if truth_path is not None:
            if truth is None:  # read, and labelled by area, once for every file
                truth = with_area_labels(load_truth(truth_path)) if areas else load_truth(truth_path)
            scored_against = truth
        elif embedded_truth is not None:
            scored_against = embedded_truth
        else:
            raise TableError(f"{predictions_path}: no truth given and no true_lat / true_lon columns to use; "
                             "pass --truth with the benchmark's metadata file")
        evaluations.append(evaluate(predictions, scored_against, method=method, inclusive=inclusive, areas=areas))
    return evaluations


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
