"""Is a predicted point on land? GLOBE's 1 km world land mask, as the global-land-mask package ships it.

`scripts/setup.sh` packs the package's mask (21,600 x 43,200 cells of 1/120 degree,
933 MB as booleans) to one bit a cell in `<venv>/share/geoloc/landmask/` (117 MB), which
is memory-mapped here: a lookup reads only the pages it touches. A point counts as in
the open sea when no land cell lies within `margin` cells of its own (1 by default,
about 1 km): a photo on a beach or a pier is not flagged for the mask's coarse coast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from geoloc.places.boundaries import BOUNDARIES_ENV, BoundariesError, boundaries_folder

LAND_FOLDER = "landmask"


@dataclass(frozen=True)
class LandMask:
    """Rows of packed land bits, north to south, and the grid they sample."""

    bits: NDArray[np.uint8]
    grid: dict

    def _land(self, rows: NDArray[np.int64], columns: NDArray[np.int64]) -> NDArray[np.bool_]:
        rows = np.clip(rows, 0, self.grid["rows"] - 1)
        columns = columns % self.grid["columns"]
        return ((self.bits[rows, columns >> 3] >> (7 - (columns & 7))) & 1).astype(bool)

    def at_sea(self, lat: ArrayLike, lon: ArrayLike, margin: int = 1) -> NDArray[np.bool_]:
        """True where no land cell lies within `margin` cells of the point's; False for NaN coordinates."""
        lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
        lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
        known = np.isfinite(lat) & np.isfinite(lon)
        row = np.floor((np.where(known, lat, 0.0) - self.grid["lat_first"]) / self.grid["lat_step"]).astype(np.int64)
        column = np.floor((np.where(known, lon, 0.0) - self.grid["lon_first"]) / self.grid["lon_step"]).astype(
            np.int64)
        land = np.zeros(len(lat), dtype=bool)
        for dr in range(-margin, margin + 1):
            for dc in range(-margin, margin + 1):
                land |= self._land(row + dr, column + dc)
        return known & ~land


def sea_flags(lat: ArrayLike, lon: ArrayLike) -> NDArray[np.bool_] | None:
    """`LandMask.at_sea` of the installed mask, or None where the mask is not installed."""
    try:
        mask = land_mask()
    except BoundariesError:
        return None
    return mask.at_sea(lat, lon)


@cache
def land_mask(folder: Path | None = None) -> LandMask:
    """The packed mask, memory-mapped once per process."""
    folder = (Path(folder) if folder is not None else boundaries_folder()) / LAND_FOLDER
    if not (folder / "land_bits.npy").is_file():
        raise BoundariesError(f"{folder}: no land mask (land_bits.npy); run scripts/setup.sh, or point "
                              f"{BOUNDARIES_ENV} at a folder holding landmask/")
    grid = json.loads((folder / "grid.json").read_text())
    return LandMask(np.load(folder / "land_bits.npy", mmap_mode="r", allow_pickle=False), grid)
