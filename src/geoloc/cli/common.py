"""What every sub-command shares: consoles and turning expected failures into clean exits."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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


def progress_bar(label: str) -> Progress:
    """A progress bar on stderr (stdout stays clean for JSON), gone once done."""
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=errors,
                    transient=True)


@contextlib.contextmanager
def progress_callback(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar fed by the `progress(done, total)` callback the library's long functions take."""
    with progress_bar(label) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
