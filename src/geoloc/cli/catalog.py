"""`geoloc catalog build`: the sources into one clean catalog, with a quarantine for the rest."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from geoloc.catalog import QUARANTINE_REASONS, BuildOptions, BuildSummary, build_catalog, parse_source
from geoloc.cli.common import clean_errors, console
from geoloc.cluster import ClusterError, check_engine
from geoloc.machine import cpu_count

catalog_app = typer.Typer(help="Build the catalog of geotagged photos from the public sources.", no_args_is_help=True)


def print_summary(summary: BuildSummary) -> None:
    """Counts only: rows kept per source, rows refused per reason."""
    kept = Table(title="Kept")
    kept.add_column("source")
    kept.add_column("rows", justify="right")
    for source, count in summary.kept.items():
        kept.add_row(source, f"{count:,}")
    console.print(kept)
    refused = Table(title="Refused (see quarantine.parquet)")
    refused.add_column("reason")
    for source in summary.kept:
        refused.add_column(source, justify="right")
    for reason in QUARANTINE_REASONS:
        refused.add_row(reason, *(f"{summary.refused.get((source, reason), 0):,}" for source in summary.kept))
    console.print(refused)


@catalog_app.command("build")
def build_command(
    sources: list[str] = typer.Option(..., "--source", help="KIND=PATH, KIND one of mp16, gldv2, wwgeotag, photos, "
                                      "csv, osv5m; repeatable."),
    out: Path = typer.Option(..., "--out", help="Output folder: catalog.parquet, quarantine.parquet, "
                             "path_to_coords.csv."),
    landmark_coords: Path | None = typer.Option(None, "--landmark-coords", help="landmark_id,lat,lon (for gldv2)."),
    workers: int = typer.Option(cpu_count(), "--workers", min=1,
                                help="Processes that scan files and shards (local engine)."),
    engine: str = typer.Option("local", "--engine", help="local (processes on this machine) or ray (a Ray cluster; "
                               "pip install 'geoloc\\[ray]')."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="ray engine: the cluster (auto, "
                                           "ray://HEAD:10001); default: start a local Ray."),
    csv_path_column: str = typer.Option("path", "--csv-path-column", help="csv source: column with the image path."),
    csv_lat_column: str = typer.Option("lat", "--csv-lat-column", help="csv source: latitude column."),
    csv_lon_column: str = typer.Option("lon", "--csv-lon-column", help="csv source: longitude column."),
    csv_image_root: Path | None = typer.Option(None, "--csv-image-root", help="csv source: folder the paths are "
                                               "relative to (default: the table's folder)."),
    osv5m_split: str = typer.Option("train", "--osv5m-split", help="osv5m source: the split to read, train or "
                                    "test (its <split>.csv and images/<split>/NN.zip)."),
) -> None:
    """Read every source, refuse bad rows with a reason, dedupe, and write the catalog (resumable)."""
    with clean_errors(ClusterError):
        options = BuildOptions(
            work_dir=out / ".work", workers=workers, engine=check_engine(engine), ray_address=ray_address,
            landmark_coords=landmark_coords,
            csv_id_column=csv_path_column, csv_lat_column=csv_lat_column, csv_lon_column=csv_lon_column,
            csv_image_root=csv_image_root, osv5m_split=osv5m_split,
        )
        summary = build_catalog([parse_source(text) for text in sources], out, options)
    print_summary(summary)


@catalog_app.command("decontaminate")
def decontaminate_command(
    catalog: Path = typer.Option(..., "--catalog", help="Catalog folder (from geoloc catalog build)."),
    against: list[Path] = typer.Option(..., "--against", help="A folder of benchmark photos, or a benchmark truth "
                                       "table (image_id, lat, lon or IMG_ID, LAT, LON); repeatable."),
    out: Path = typer.Option(..., "--out", help="Output folder: catalog.parquet without the leaks, leaks.parquet."),
    radius_km: float | None = typer.Option(None, "--radius-km", help="Also drop photos closer than this to a "
                                           "benchmark photo's location (needs a truth table)."),
    workers: int = typer.Option(cpu_count(), "--workers", min=1,
                                help="Processes that decode photos (local engine)."),
    engine: str = typer.Option("local", "--engine", help="local or ray (pip install 'geoloc\\[ray]')."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="ray engine: the cluster (auto, "
                                           "ray://HEAD:10001); default: start a local Ray."),
) -> None:
    """A copy of the catalog without the photos that leak a benchmark: same bytes, same picture, too close."""
    from geoloc.catalog.decontaminate import decontaminate

    with clean_errors(ClusterError):
        options = BuildOptions(work_dir=out / ".work", workers=workers, engine=check_engine(engine),
                               ray_address=ray_address)
        summary = decontaminate(catalog, against, out, radius_km, options)
    table = Table(title=f"Kept {summary.kept:,} photos; removed (see leaks.parquet)")
    table.add_column("reason")
    table.add_column("photos", justify="right")
    for reason, count in summary.removed.items():
        table.add_row(reason, f"{count:,}")
    console.print(table)


def register(app: typer.Typer, panel: str) -> None:
    app.add_typer(catalog_app, name="catalog", rich_help_panel=panel)
