"""Bootstrap intervals and paired significance for the benchmark figures, vectorized.

A bootstrap resample draws the n photos with replacement. Nothing here draws rows: for
each figure the resampled statistic has a distribution that can be drawn directly.

- A share (accuracy at a radius, in an area): the resampled number of hits among n
  photos is Binomial(n, k/n); with photos left out of the count (no area label), the
  hits, the counted misses and the uncounted photos are Multinomial.
- The median error: the number of photos with a prediction in the resample is
  Binomial(n, m/n); given it, the k-th smallest of m* draws from the m sorted errors is
  the error at rank ceil(m·U), U ~ Beta(k, m* + 1 − k), the k-th order statistic of m*
  uniforms (and the next one above it, for an even m*, follows from U).
- GeoScore, a mean: the photos sorted by score fall into at most GEOSCORE_BINS bins of
  equal size; the resample is Multinomial over the bins, each counted at its mean score
  (exact when every photo has its own bin).
- A paired difference between two methods on the same photos: the photos only the
  baseline gets right, only the other method gets right, and the rest are Multinomial.

So 1,000 resamples of 10 M photos cost a few thousand draws per figure, not 10^10 rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from geoloc.evaluate import GEOSCORE_MAX, GEOSCORE_SCALE_KM, Evaluation, accuracy_key, hit_column
from geoloc.geo import ACCURACY_THRESHOLDS_KM
from geoloc.places.areas import AREAS

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 1000
GEOSCORE_BINS = 4096
"""Bins of the GeoScore bootstrap: the within-bin spread left out is below 1/4096 of the range."""


def percentile_interval(samples: NDArray[np.float64], confidence: float = CONFIDENCE) -> list[float]:
    """The percentile bootstrap interval [low, high] of resampled statistics (NaN ones ignored)."""
    tail = (1 - confidence) / 2
    finite = samples[np.isfinite(samples)]
    if not finite.size:
        return [float("nan"), float("nan")]
    low, high = np.quantile(finite, [tail, 1 - tail])
    return [float(low), float(high)]


def resampled_share(
    hits: int, counted: int, n: int, resamples: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Resampled hits / counted, of n photos of which `counted` count and `hits` are hits."""
    if counted == n:
        return rng.binomial(n, hits / n, size=resamples) / n if n else np.full(resamples, np.nan)
    drawn = rng.multinomial(n, [hits / n, (counted - hits) / n, (n - counted) / n], size=resamples)
    denominators = drawn[:, 0] + drawn[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominators > 0, drawn[:, 0] / denominators, np.nan)


def resampled_median(
    sorted_errors: NDArray[np.float64], n: int, resamples: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Resampled median error of n photos whose m predicted errors are `sorted_errors` (ascending)."""
    m = sorted_errors.size
    if not m:
        return np.full(resamples, np.nan)
    predicted = rng.binomial(n, m / n, size=resamples)
    has_any = predicted > 0
    predicted = np.maximum(predicted, 1)
    lower_rank = (predicted + 1) // 2  # 1-based rank of the lower middle
    lower = rng.beta(lower_rank, predicted + 1 - lower_rank)
    # For an even count, the next order statistic: the smallest of the m* - k uniforms above `lower`.
    above = predicted - lower_rank
    upper = np.where(above > 0, lower + (1 - lower) * rng.beta(1, np.maximum(above, 1)), lower)
    upper = np.where(predicted % 2 == 0, upper, lower)

    def error_at(uniform: NDArray[np.float64]) -> NDArray[np.float64]:
        return sorted_errors[np.clip(np.ceil(uniform * m).astype(np.int64) - 1, 0, m - 1)]

    medians = (error_at(lower) + error_at(upper)) / 2
    return np.where(has_any, medians, np.nan)


def resampled_mean(
    values: NDArray[np.float64],
    resamples: int,
    rng: np.random.Generator,
    bins: int = GEOSCORE_BINS,
    ordered: bool = False,
) -> NDArray[np.float64]:
    """Resampled mean of `values`, the rows grouped into equal-count bins of sorted values.

    `ordered`: the values are already sorted (either way), so not sorted again.
    """
    n = values.size
    if not n:
        return np.full(resamples, np.nan)
    ordered_values = values if ordered else np.sort(values)
    edges = np.linspace(0, n, min(bins, n) + 1).astype(np.int64)
    sizes = np.diff(edges)
    sums = np.add.reduceat(ordered_values, edges[:-1])
    counts = rng.multinomial(n, sizes / n, size=resamples)
    return counts @ (sums / sizes) / n


@dataclass(frozen=True)
class PairedDifference:
    """A paired comparison of a share: the other method minus the baseline, on the same photos."""

    difference: float
    ci: list[float]
    p_value: float
    only_baseline: int
    only_predictions: int


def mcnemar_p_value(only_baseline: int, only_predictions: int) -> float:
    """Exact (binomial) McNemar test: two-sided p of the discordant photos splitting as they did."""
    from scipy.stats import binomtest  # scipy.stats takes a while to import: only when a comparison is made

    discordant = only_baseline + only_predictions
    if not discordant:
        return 1.0
    return float(binomtest(only_predictions, discordant, 0.5).pvalue)


def paired_difference(
    baseline_hits: NDArray[np.bool_],
    hits: NDArray[np.bool_],
    counted: NDArray[np.bool_] | None,
    resamples: int,
    rng: np.random.Generator,
    confidence: float = CONFIDENCE,
) -> PairedDifference:
    """Share of `hits` minus share of `baseline_hits` over the counted photos, interval and p-value.

    The paired bootstrap resamples photos, keeping each photo's two outcomes together:
    the discordant photos (only the baseline right, only the other right), the other
    counted photos and the uncounted ones are Multinomial.
    """
    n = baseline_hits.size
    if counted is None:
        counted = np.ones(n, dtype=bool)
    only_baseline = int(np.count_nonzero(baseline_hits & ~hits & counted))
    only_predictions = int(np.count_nonzero(hits & ~baseline_hits & counted))
    total = int(np.count_nonzero(counted))
    if not total:
        nan = float("nan")
        return PairedDifference(nan, [nan, nan], 1.0, 0, 0)
    difference = (only_predictions - only_baseline) / total
    shares = np.array([only_baseline, only_predictions, total - only_baseline - only_predictions, n - total]) / n
    drawn = rng.multinomial(n, shares, size=resamples)
    denominators = drawn[:, :3].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        resampled = np.where(denominators > 0, (drawn[:, 1] - drawn[:, 0]) / denominators, np.nan)
    return PairedDifference(
        difference=difference,
        ci=percentile_interval(resampled, confidence),
        p_value=mcnemar_p_value(only_baseline, only_predictions),
        only_baseline=only_baseline,
        only_predictions=only_predictions,
    )


def _share_inputs(evaluation: Evaluation, key: str) -> tuple[NDArray[np.bool_], NDArray[np.bool_] | None]:
    """Per photo, whether it counts as a hit for share `key`, and whether it is counted at all (None: all are)."""
    truth = evaluation.truth
    for area in AREAS:
        if key == f"acc_{area}":
            column = truth[hit_column(area)]
            return column.fill_null(False).to_numpy(), column.is_not_null().to_numpy()
    distances = truth["distance_km"].fill_null(np.inf).to_numpy()
    within = np.less_equal if evaluation.inclusive else np.less
    return within(distances, _radius_km(key)), None


def _radius_km(key: str) -> float:
    """The radius of an accuracy key: acc_25km -> 25."""
    return next(t for t in ACCURACY_THRESHOLDS_KM if accuracy_key(t) == key)


def share_keys(evaluation: Evaluation) -> list[str]:
    """The shares of an evaluation that have per-photo outcomes: every radius, every area computed."""
    areas = [f"acc_{area}" for area in AREAS if hit_column(area) in evaluation.truth.columns]
    return [*(accuracy_key(t) for t in ACCURACY_THRESHOLDS_KM), *areas]


def figure_intervals(
    evaluation: Evaluation, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> dict[str, list[float]]:
    """A bootstrap interval per accuracy, the median error and GeoScore, resampling photos.

    The errors are sorted once: the hits at each radius are counted by binary search, and
    the scores, decreasing with the error, come out sorted for the GeoScore bins.
    """
    rng = np.random.default_rng(seed)
    n = evaluation.truth.height
    ordered = np.sort(evaluation.truth["distance_km"].drop_nulls().to_numpy())
    side = "right" if evaluation.inclusive else "left"
    intervals: dict[str, list[float]] = {}
    for key in share_keys(evaluation):
        if key.removeprefix("acc_") in AREAS:
            hits, counted = _share_inputs(evaluation, key)
            hit_count, counted_total = int(np.count_nonzero(hits)), int(np.count_nonzero(counted))
        else:
            hit_count, counted_total = int(np.searchsorted(ordered, _radius_km(key), side=side)), n
        samples = resampled_share(hit_count, counted_total, n, resamples, rng)
        intervals[key] = percentile_interval(samples, confidence)
    intervals["median_km"] = percentile_interval(resampled_median(ordered, n, resamples, rng), confidence)
    scores = np.zeros(n)
    scores[: ordered.size] = GEOSCORE_MAX * np.exp(-ordered / GEOSCORE_SCALE_KM)
    intervals["geoscore"] = percentile_interval(resampled_mean(scores, resamples, rng, ordered=True), confidence)
    return intervals


def same_photos(first: Evaluation, second: Evaluation) -> bool:
    """Whether two evaluations scored the same photos in the same order (so they can be paired)."""
    return first.truth.height == second.truth.height and bool(
        (first.truth["image_id"] == second.truth["image_id"]).all()
    )


def compare(
    baseline: Evaluation,
    evaluation: Evaluation,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, PairedDifference]:
    """Paired differences (evaluation − baseline) of every share both have, by key."""
    if not same_photos(baseline, evaluation):
        raise ValueError("paired comparisons need both evaluations over the same photos")
    rng = np.random.default_rng(seed)
    differences = {}
    for key in share_keys(evaluation):
        if key not in share_keys(baseline):
            continue
        baseline_hits, counted = _share_inputs(baseline, key)
        hits, _ = _share_inputs(evaluation, key)
        differences[key] = paired_difference(baseline_hits, hits, counted, resamples, rng, confidence)
    return differences


def metric_label(key: str) -> str:
    """How a share is named in a sentence: '25 km', 'country'."""
    for threshold in ACCURACY_THRESHOLDS_KM:
        if key == accuracy_key(threshold):
            return f"{threshold:g} km"
    return key.removeprefix("acc_").replace("subregion", "sub-region")


def format_p_value(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3g}"


def quotable(baseline: str, predictions: str, key: str, difference: PairedDifference) -> str:
    """One sentence a reader can quote: 'B − A at 25 km: +2.10 points [0.40, 3.80], p = 0.02'."""
    low, high = (100 * bound for bound in difference.ci)
    return (f"{predictions} − {baseline} at {metric_label(key)}: {100 * difference.difference:+.2f} points "
            f"[{low:+.2f}, {high:+.2f}], {format_p_value(difference.p_value)} "
            f"(right only with {predictions}: {difference.only_predictions:,}; "
            f"only with {baseline}: {difference.only_baseline:,})")
