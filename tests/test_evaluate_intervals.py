"""Bootstrap intervals and paired tests: right coverage, same distribution as resampling rows."""

import math

import numpy as np
import polars as pl
import pytest
from scipy.stats import binom, binomtest, ks_2samp

from geoloc.evaluate import GEOSCORE_MAX, GEOSCORE_SCALE_KM, Evaluation, metrics_from_distances
from geoloc.evaluate.intervals import (
    compare,
    figure_intervals,
    mcnemar_p_value,
    paired_difference,
    percentile_interval,
    quotable,
    resampled_mean,
    resampled_median,
    resampled_share,
)

RESAMPLES = 2000


def geoscores(distances: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(distances), 0.0, GEOSCORE_MAX * np.exp(-np.nan_to_num(distances) / GEOSCORE_SCALE_KM))


def textbook_bootstrap(distances: np.ndarray, resamples: int, seed: int) -> dict[str, np.ndarray]:
    """The loop of a statistics textbook: draw n rows with replacement, recompute the figures."""
    rng = np.random.default_rng(seed)
    figures: dict[str, list[float]] = {"acc_25km": [], "median_km": [], "geoscore": []}
    for _ in range(resamples):
        metrics = metrics_from_distances(distances[rng.integers(0, distances.size, distances.size)])
        for key, values in figures.items():
            values.append(np.nan if metrics[key] is None else metrics[key])
    return {key: np.array(values) for key, values in figures.items()}


def small_distances(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    distances = rng.lognormal(mean=5.0, sigma=2.0, size=n)
    distances[rng.random(n) < 0.1] = np.nan  # photos without a prediction
    return distances


@pytest.mark.parametrize("n", [41, 60])
def test_the_vectorized_bootstrap_draws_what_resampling_rows_draws(n):
    distances = small_distances(n, seed=n)
    loop = textbook_bootstrap(distances, RESAMPLES, seed=1)
    rng = np.random.default_rng(2)
    predicted = np.sort(distances[~np.isnan(distances)])
    hits = int(np.count_nonzero(predicted < 25))
    vectorized = {
        "acc_25km": resampled_share(hits, n, n, RESAMPLES, rng),
        "median_km": resampled_median(predicted, n, RESAMPLES, rng),
        "geoscore": resampled_mean(geoscores(distances), RESAMPLES, rng),
    }
    for key in loop:
        assert ks_2samp(loop[key], vectorized[key]).pvalue > 0.001, key
    # Same spread, not merely the same shape: the intervals nearly agree.
    for key in loop:
        low, high = percentile_interval(loop[key])
        vlow, vhigh = percentile_interval(vectorized[key])
        width = high - low
        assert abs(vlow - low) < 0.2 * width and abs(vhigh - high) < 0.2 * width, key


def test_a_wrong_resampling_would_be_told_apart():
    """The comparison above has power: intervals half as wide (4 times the photos) are told apart."""
    distances = small_distances(60, seed=60)
    loop = textbook_bootstrap(distances, RESAMPLES, seed=1)
    predicted = np.sort(distances[~np.isnan(distances)])
    too_narrow = resampled_median(np.repeat(predicted, 4), 240, RESAMPLES, np.random.default_rng(2))
    assert ks_2samp(loop["median_km"], too_narrow).pvalue < 0.001


def coverage(covered: int, trials: int) -> float:
    """Two-sided p-value of the coverage observed against the nominal 95%."""
    return binomtest(covered, trials, 0.95).pvalue


def test_intervals_cover_the_true_value_95_percent_of_the_time():
    """Simulated benchmarks with a known rate, median and mean: about 95% of intervals cover them."""
    rng = np.random.default_rng(7)
    trials, n, rate, scale_km = 300, 500, 0.3, 800.0
    true_median = scale_km * math.log(2)
    true_geoscore = GEOSCORE_MAX / (1 + scale_km / GEOSCORE_SCALE_KM)
    covered = {"share": 0, "median": 0, "geoscore": 0}
    for _ in range(trials):
        hits = int(rng.binomial(n, rate))
        low, high = percentile_interval(resampled_share(hits, n, n, 1000, rng))
        covered["share"] += low <= rate <= high
        errors = np.sort(rng.exponential(scale_km, size=n))
        low, high = percentile_interval(resampled_median(errors, n, 1000, rng))
        covered["median"] += low <= true_median <= high
        low, high = percentile_interval(resampled_mean(geoscores(errors), 1000, rng, bins=64))
        covered["geoscore"] += low <= true_geoscore <= high
    for name, count in covered.items():
        assert coverage(count, trials) > 0.01, (name, count / trials)


def test_paired_intervals_cover_a_known_difference_95_percent_of_the_time():
    rng = np.random.default_rng(8)
    trials, n = 300, 1000
    only_baseline, only_other, both = 0.05, 0.08, 0.30  # the true difference: 3 points
    covered = 0
    for _ in range(trials):
        outcome = rng.choice(4, size=n, p=[only_baseline, only_other, both, 1 - only_baseline - only_other - both])
        baseline_hits, other_hits = np.isin(outcome, [0, 2]), np.isin(outcome, [1, 2])
        low, high = paired_difference(baseline_hits, other_hits, None, 500, rng).ci
        covered += low <= only_other - only_baseline <= high
    assert coverage(covered, trials) > 0.01, covered / trials


def test_mcnemar_is_the_exact_binomial_computation():
    # 12 photos only the baseline gets right, 3 only the other: P(X <= 3 or X >= 12), X ~ Binomial(15, 1/2).
    expected = binom.cdf(3, 15, 0.5) + binom.sf(11, 15, 0.5)
    assert mcnemar_p_value(12, 3) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_p_value(3, 12) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(5, 5) == pytest.approx(1.0)


def test_paired_difference_counts_the_photos_each_method_alone_gets_right():
    baseline = np.array([1, 1, 0, 0, 1, 0, 1, 1, 0, 0], dtype=bool)
    other = np.array([1, 0, 1, 1, 1, 1, 0, 1, 0, 1], dtype=bool)
    result = paired_difference(baseline, other, None, 1000, np.random.default_rng(0))
    assert (result.only_baseline, result.only_predictions) == (2, 4)
    assert result.difference == pytest.approx(0.2)
    assert result.ci[0] < 0.2 < result.ci[1]
    assert result.p_value == pytest.approx(mcnemar_p_value(2, 4))


def test_paired_interval_matches_resampling_pairs_of_rows():
    rng = np.random.default_rng(3)
    baseline = rng.random(80) < 0.4
    other = np.where(rng.random(80) < 0.7, baseline, rng.random(80) < 0.6)
    counted = rng.random(80) < 0.9
    loop = []
    for _ in range(RESAMPLES):
        rows = rng.integers(0, 80, 80)
        kept = counted[rows]
        loop.append(other[rows][kept].mean() - baseline[rows][kept].mean())
    result = paired_difference(baseline, other, counted, RESAMPLES, rng)
    low, high = percentile_interval(np.array(loop))
    assert result.ci == pytest.approx([low, high], abs=0.03)
    assert result.difference == pytest.approx(other[counted].mean() - baseline[counted].mean())


def evaluation_of(ids: list[str], distances: list[float | None], inclusive: bool = False) -> Evaluation:
    truth = pl.DataFrame({"image_id": ids, "lat": [0.0] * len(ids), "lon": [0.0] * len(ids),
                          "distance_km": pl.Series(distances, dtype=pl.Float64)})
    metrics = metrics_from_distances(truth["distance_km"].fill_null(np.nan).to_numpy(), inclusive)
    return Evaluation(metrics=metrics, truth=truth, inclusive=inclusive)


def test_figure_intervals_contain_the_figures_and_are_reproducible():
    rng = np.random.default_rng(5)
    distances = [float(d) for d in rng.lognormal(5, 2, 300)] + [None] * 20
    evaluation = evaluation_of([str(i) for i in range(320)], distances)
    intervals = figure_intervals(evaluation, resamples=500, seed=11)
    assert set(intervals) == {"acc_1km", "acc_25km", "acc_200km", "acc_750km", "acc_2500km", "median_km", "geoscore"}
    for key, (low, high) in intervals.items():
        assert low <= evaluation.metrics[key] <= high, key
    assert intervals == figure_intervals(evaluation, resamples=500, seed=11)
    assert intervals != figure_intervals(evaluation, resamples=500, seed=12)


def test_compare_pairs_photos_and_writes_a_quotable_line():
    ids = [str(i) for i in range(6)]
    baseline = evaluation_of(ids, [10.0, 30.0, 30.0, 300.0, None, 5.0])
    better = evaluation_of(ids, [10.0, 20.0, 24.0, 20.0, 1.0, 30.0])
    differences = compare(baseline, better, resamples=200)
    at_25 = differences["acc_25km"]
    assert (at_25.only_baseline, at_25.only_predictions) == (1, 4)
    assert at_25.difference == pytest.approx(3 / 6)
    line = quotable("A", "B", "acc_25km", at_25)
    assert line.startswith("B − A at 25 km: +50.00 points [")
    assert "p = 0.375" in line
    with pytest.raises(ValueError, match="same photos"):
        compare(baseline, evaluation_of([*ids[:5], "other"], [1.0] * 6))
