"""The catalog stage: one reader per source, combine, dedupe, quarantine, landmark coordinates."""

from geoloc.catalog.build import (
    CATALOG_FILE,
    PATH_TO_COORDS_FILE,
    QUARANTINE_FILE,
    QUARANTINE_REASONS,
    BuildSummary,
    build_catalog,
    combine,
    open_store,
    parse_source,
)
from geoloc.catalog.sources import READERS, BuildOptions, CatalogError

__all__ = [
    "CATALOG_FILE",
    "PATH_TO_COORDS_FILE",
    "QUARANTINE_FILE",
    "QUARANTINE_REASONS",
    "READERS",
    "BuildOptions",
    "BuildSummary",
    "CatalogError",
    "build_catalog",
    "combine",
    "open_store",
    "parse_source",
]
