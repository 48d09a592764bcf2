"""The `geoloc` command line: one sub-command per stage, each a thin layer over a Python function."""

from __future__ import annotations

import click
import typer
import typer.core

from geoloc import __version__
from geoloc.cli import (
    candidates,
    catalog,
    cells,
    classifier,
    evaluate,
    gallery,
    geoclip,
    landmarks,
    plonk,
    predict,
    ranker,
    recipe,
    serve,
)

_PLAIN_TYPES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT"}


def _plain_metavar(option: typer.core.TyperOption, ctx: click.Context) -> str | None:
    """PATH, INTEGER, [a|b] as click writes them and none for a flag (typer prints <path>, <bool>, <list[str]>)."""
    if option.metavar is not None or option.is_flag:
        return option.metavar
    label = option.display_type(ctx).strip("<>").removesuffix(" range")
    if label.startswith("list[") and label.endswith("]"):
        label = label[len("list["):-1]
    if "|" in label:
        return f"[{label}]"
    return _PLAIN_TYPES.get(label, label).upper()


typer.core.TyperOption.display_type_rich = _plain_metavar
typer.core.TyperArgument.display_type_rich = lambda argument, ctx: None  # its name is shown already

PIPELINE_ORDER = ("catalog", "landmarks", "cells", "embed", "index", "retrieve", "classifier", "geoclip", "candidates",
                  "ranker", "evaluate", "predict", "run", "serve")


class _PipelineOrder(typer.core.TyperGroup):
    """Lists the sub-commands in pipeline order (typer would list plain commands before groups)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands, key=lambda name: (PIPELINE_ORDER + (name,)).index(name))


app = typer.Typer(
    name="geoloc",
    cls=_PipelineOrder,
    help="Worldwide photo geolocalization: catalog, cells, embeddings, candidates, ranking, evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# In pipeline order, a panel per part of the road, as `geoloc --help` lists them.
catalog.register(app, "1. Data: catalog and cells")
landmarks.register(app, "1. Data: catalog and cells")
cells.register(app, "1. Data: catalog and cells")
gallery.register(app, "2. Gallery: embeddings, index, retrieval")
classifier.register(app, "3. Candidates")
geoclip.register(app, "3. Candidates")
candidates.register(app, "3. Candidates")
plonk.register(app, candidates.app, "3. Candidates")
ranker.register(app, "4. Ranking")
evaluate.register(app, "5. Results")
predict.register(app, candidates.app, "5. Results")
recipe.register(app, "5. Results")
serve.register(app, "5. Results")


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
