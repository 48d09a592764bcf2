"""`geoloc cells build | assign | plot`: geocells from the catalog, assigning coordinates, a picture."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import typer
from rich.table import Table

from geoloc.cells import CellIndex, CellsOptions, CellsSummary, build_cells
from geoloc.cells.hierarchy import MAX_LEVELS
from geoloc.cells.semantic_build import SemanticOptions
from geoloc.cli.common import clean_errors, console, errors
from geoloc.progress import progress_bar
from geoloc.tables import TableError, as_float_column, read_table, write_table

cells_app = typer.Typer(help="Geocells: HDBSCAN on the sphere, a hierarchy of coarser cells, assignment.",
                        no_args_is_help=True)


def print_summary(summary: CellsSummary, out: Path) -> None:
    """Counts only, never coordinates."""
    table = Table(title=f"Cells in {out}")
    table.add_column("level")
    table.add_column("cells", justify="right")
    for level, cells in enumerate(summary.cells_per_level):
        table.add_row(f"cluster_{level}", f"{cells:,}")
    console.print(table)
    console.print(f"{summary.photos:,} photos, {summary.distinct_coordinates:,} distinct coordinates, "
                  f"{summary.noise_photos:,} noise photos; {summary.seconds:.1f} s")
    for warning in summary.warnings:
        errors.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


@cells_app.command("build")
def build_command(
    catalog: Path = typer.Option(..., "--catalog", help="Folder holding catalog.parquet (geoloc catalog build)."),
    out: Path = typer.Option(..., "--out", help="Output folder for the cell files."),
    min_cluster_size: int = typer.Option(5, "--min-cluster-size", help="Fewest photos in a cell."),
    min_samples: int = typer.Option(2, "--min-samples", help="HDBSCAN min_samples: neighbours (other photos) "
                                    "within a photo's core distance."),
    levels: int = typer.Option(3, "--levels", min=1, max=MAX_LEVELS, help="Levels, cluster_0 (finest) included."),
    assign_noise: bool = typer.Option(False, "--assign-noise", help="Give each noise photo its nearest cell."),
    method: str = typer.Option("hdbscan", "--method", help="hdbscan (clusters of photo locations, a hierarchy) or "
                               "semantic (PIGEON's cells along admin borders, one level)."),
    preset: str = typer.Option("pigeotto", "--preset", help="semantic: pigeon (30-60 photos a cell) or pigeotto "
                               "(1000-2000)."),
    min_photos: int | None = typer.Option(None, "--min-photos", min=1, help="semantic: overrides the preset's "
                                          "minimum photos per cell."),
    max_photos: int | None = typer.Option(None, "--max-photos", min=2, help="semantic: overrides its maximum."),
) -> None:
    """Cluster the catalog's photos into cells and coarser levels; write the data-preparation guide's files."""
    if method == "semantic":
        _build_semantic(catalog, out, SemanticOptions(preset, min_photos, max_photos))
        return
    if method != "hdbscan":
        errors.print(f"error: --method {method!r}: expected hdbscan or semantic", highlight=False)
        raise typer.Exit(2)
    options = CellsOptions(min_cluster_size, min_samples, levels, assign_noise)
    with clean_errors(), progress_bar() as progress:
        task = progress.add_task("cells", total=5 + assign_noise)

        def on_step(name: str) -> None:
            progress.update(task, description=name, advance=1)

        summary = build_cells(catalog, out, options, on_step=on_step)
    print_summary(summary, out)


def _build_semantic(catalog: Path, out: Path, options: SemanticOptions) -> None:
    from geoloc.cells.semantic_build import build_semantic_cells

    with clean_errors(), progress_bar() as progress:
        task = progress.add_task("semantic cells", total=None)
        summary = build_semantic_cells(catalog, out, options,
                                       on_step=lambda name: progress.update(task, description=name))
    print_summary(summary, out)


@cells_app.command("assign")
def assign_command(
    points: Path = typer.Argument(..., help="CSV or Parquet table with lat and lon columns."),
    cells: Path = typer.Option(..., "--cells", help="Output folder of `geoloc cells build`."),
    out: Path = typer.Option(..., "--out", help="The table with cluster_0 .. cluster_N added (CSV or Parquet)."),
    lat_column: str = typer.Option("lat", "--lat-column"),
    lon_column: str = typer.Option("lon", "--lon-column"),
    max_distance_km: float | None = typer.Option(None, "--max-distance-km", help="Farther than this from every "
                                                 "clustered training coordinate: -1 at every level."),
) -> None:
    """Each point's cell at every level (level 0: cell of the nearest clustered training coordinate)."""
    with clean_errors():
        index = CellIndex.load(cells)
        table = read_table(points)
        for column in (lat_column, lon_column):
            if column not in table.columns:
                raise TableError(f"{points}: no column {column!r}; found {', '.join(table.columns) or 'none'}")
            table = as_float_column(table, column, table.columns[0], points)
        assigned = index.assign(table[lat_column].to_numpy(), table[lon_column].to_numpy(), max_distance_km)
        table = table.with_columns(pl.Series(f"cluster_{level}", assigned[:, level]) for level in range(index.levels))
        write_table(table, out)
    unassigned = int((assigned[:, 0] == -1).sum())
    console.print(f"{len(table):,} points assigned, {unassigned:,} without a cell; written to {out}")


@cells_app.command("plot")
def plot_command(
    cells: Path = typer.Argument(..., help="Output folder of `geoloc cells build`."),
    out: Path = typer.Option(Path("cells.png"), "--out", help="Image file (png, svg or pdf)."),
    level: int = typer.Option(0, "--level", min=0, help="Which level to draw (0 = finest)."),
) -> None:
    """Draw the cells of one level on a world outline (offline, no map tiles)."""
    from geoloc.cells.plot import plot_cells

    with clean_errors():
        drawn = plot_cells(cells, out, level=level)
    console.print(f"{drawn:,} cells at level {level} drawn to {out}")


def register(app: typer.Typer, panel: str) -> None:
    app.add_typer(cells_app, name="cells", rich_help_panel=panel)
