"""What every sub-command shares: consoles and turning expected failures into clean exits."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
errors = Console(stderr=True)


@contextlib.contextmanager
def clean_errors(*expected: type[BaseException]) -> Iterator[None]:
    """Report expected failures (bad input, missing files) as one line and exit code 2."""
    try:
        yield
    except expected as error:
        errors.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from error
