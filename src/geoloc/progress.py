"""Progress display for every long job: on stderr, so stdout stays clean for JSON and tables."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(transient: bool = True) -> Progress:
    """One line per task (its description, done of total, time taken and left) on stderr.

    `transient` bars vanish once done; a long multi-step build keeps them as a record.
    """
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=transient)


@contextlib.contextmanager
def progress_callback(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar fed by the `progress(done, total)` callback the library's long functions take."""
    with progress_bar() as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
