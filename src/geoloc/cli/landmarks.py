"""`geoloc landmarks resolve`: Commons categories of landmarks to coordinates."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from geoloc.catalog.landmarks import COMMONS_API, UNRESOLVED_REASONS, WIKIDATA_API, Politeness, resolve_landmarks
from geoloc.cli.common import clean_errors, console, errors

landmarks_app = typer.Typer(help="Landmark coordinates for Google Landmarks v2.", no_args_is_help=True)


@landmarks_app.command("resolve")
def resolve_command(
    categories_csv: Path = typer.Argument(..., help="landmark_id,category (GLDv2's train_label_to_category.csv)."),
    out: Path = typer.Option(..., "--out", help="Output: landmark_id,lat,lon for every resolved landmark."),
    cache: Path | None = typer.Option(
        None, "--cache", help="SQLite cache of API answers (default: OUT with .cache.sqlite)."
    ),
    unresolved: Path | None = typer.Option(None, "--unresolved", help="Unresolved landmarks with their reason "
                                           "(default: OUT's name + .unresolved.csv)."),
    commons_api: str = typer.Option(COMMONS_API, "--commons-api", help="MediaWiki action API of Commons."),
    wikidata_api: str = typer.Option(WIKIDATA_API, "--wikidata-api", help="MediaWiki action API of Wikidata."),
    concurrency: int = typer.Option(Politeness.concurrency, "--concurrency", min=1, max=16,
                                    help="Requests in flight at once."),
) -> None:
    """Resolve each category to coordinates (Commons, then the category's Wikidata item); resumable."""
    with clean_errors():
        summary = resolve_landmarks(categories_csv, out, cache, unresolved, commons_api, wikidata_api,
                                    Politeness(concurrency=concurrency))
    table = Table(title="Landmarks")
    table.add_column("outcome")
    table.add_column("landmarks", justify="right")
    table.add_row("resolved", f"{summary.resolved:,}")
    for reason in UNRESOLVED_REASONS:
        table.add_row(reason, f"{summary.unresolved.get(reason, 0):,}")
    table.add_row("requests sent", f"{summary.requests:,}")
    console.print(table)
    for message in summary.errors[:5]:
        errors.print(f"[yellow]warning:[/] {message}", highlight=False)
    if summary.failed_batches:
        errors.print(f"[yellow]warning:[/] {summary.failed_batches} batch(es) failed; run again to retry them "
                     "(answers so far are cached).", highlight=False)


def register(app: typer.Typer, panel: str) -> None:
    app.add_typer(landmarks_app, name="landmarks", rich_help_panel=panel)
