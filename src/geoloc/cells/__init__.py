"""Geocells: HDBSCAN on the sphere over the catalog's photos, a hierarchy of coarser cells, the data
document's exports, and assigning new coordinates to cells without a pickle."""

from .build import CELLS_JSON, CellsError, CellsOptions, CellsSummary, build_cells
from .clustering import NOISE, assign_noise_to_nearest, collapse_coordinates, hdbscan_distinct
from .index import CellIndex

__all__ = [
    "CELLS_JSON", "NOISE", "CellIndex", "CellsError", "CellsOptions", "CellsSummary", "assign_noise_to_nearest",
    "build_cells", "collapse_coordinates", "hdbscan_distinct",
]
