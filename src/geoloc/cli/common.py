"""What every sub-command shares: consoles and turning expected failures into clean exits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from geoloc.errors import InputError

console = Console()
errors = Console(stderr=True)


BAD_INPUT: tuple[type[BaseException], ...] = (
    InputError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
)
"""Failures that mean the input is wrong (geoloc's input checks, a path that is missing or not allowed)."""


@contextlib.contextmanager
def clean_errors(*expected: type[BaseException]) -> Iterator[None]:
    """Report bad input (BAD_INPUT, and the `expected` failures of a stage: an endpoint or a model that is
    unavailable) as one line and exit code 2. Anything else is a bug: its traceback is shown, exit code 1."""
    try:
        yield
    except (*BAD_INPUT, *expected) as error:
        errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from error
