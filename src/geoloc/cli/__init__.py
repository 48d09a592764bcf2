"""The `geoloc` command line: one sub-command per stage, each a thin layer over a Python function."""

from __future__ import annotations

import typer

from geoloc import __version__
from geoloc.cli import candidates, catalog, cells, classifier, evaluate, gallery, landmarks, predict, ranker, serve

app = typer.Typer(
    name="geoloc",
    help="Worldwide photo geolocalization: catalog, cells, embeddings, candidates, ranking, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
evaluate.register(app)
catalog.register(app)
landmarks.register(app)
cells.register(app)
candidates.register(app)
predict.register(app, candidates.app)
gallery.register(app)
serve.register(app)
ranker.register(app)
classifier.register(app)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"geoloc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version."),
) -> None:
    """Worldwide photo geolocalization."""


def main() -> None:
    """Console entry point."""
    app()
