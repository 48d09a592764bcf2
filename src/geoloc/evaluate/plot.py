"""Accuracy against radius, one line per method: the curve papers show beside their table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geoloc.evaluate import Evaluation, accuracy_curve, radius_rule
from geoloc.geo import ACCURACY_THRESHOLDS_KM

CURVE_RADII_KM = np.geomspace(1.0, 2500.0, 400)
"""Where each curve is sampled: 1 to 2500 km, evenly on the log axis it is drawn on."""


def plot_accuracy_curves(evaluations: dict[str, Evaluation], out: str | Path) -> None:
    """Draw accuracy (% of photos) against radius for each named evaluation; format from `out`'s suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    standard = np.asarray(ACCURACY_THRESHOLDS_KM, dtype=np.float64)
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=200)
    for radius in standard:
        axes.axvline(radius, color="#c8c8c8", linewidth=0.8, linestyle=":", zorder=0)
    rules = sorted({radius_rule(evaluation.inclusive) for evaluation in evaluations.values()})
    for name, evaluation in evaluations.items():
        distances = evaluation.truth["distance_km"].fill_null(np.nan).to_numpy()
        (line,) = axes.plot(CURVE_RADII_KM, 100 * accuracy_curve(distances, CURVE_RADII_KM, evaluation.inclusive),
                            linewidth=1.6, label=name)
        axes.plot(standard, 100 * accuracy_curve(distances, standard, evaluation.inclusive), "o",
                  color=line.get_color(), markersize=4, clip_on=False)
    axes.set_xscale("log")
    axes.set_xlim(1, 2500)
    axes.set_ylim(0, 100)
    axes.set_xticks(standard, [f"{radius:g}" for radius in standard])
    axes.minorticks_off()
    axes.set_xlabel("radius (km, log scale)")
    axes.set_ylabel(f"photos with error {' / '.join(rules)} radius (%)")
    axes.grid(axis="y", color="#e4e4e4", linewidth=0.6)
    axes.legend(loc="upper left", frameon=False)
    figure.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
