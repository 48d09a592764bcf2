"""Resumable parallel work: tasks whose results are cached as Parquet files as they finish.

A killed run loses only the tasks in flight; the next run reads the finished ones from
the cache and does the rest. Workers are spawned (not forked) processes, so the
parent's threads (polars, rich) are never copied into them.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from geoloc.tables import write_table


@dataclass(frozen=True)
class Task:
    """One unit of work: `function(*arguments)` returns a frame, cached under `key`."""

    key: str
    function: Callable[..., pl.DataFrame]
    arguments: tuple[Any, ...]


def cache_key(*parts: object) -> str:
    """A short stable name for a task from what determines its result."""
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=12).hexdigest()


def progress_bar(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), transient=transient,
    )


def run_cached(tasks: Sequence[Task], cache_dir: Path, workers: int, label: str) -> list[pl.DataFrame]:
    """The tasks' frames in task order, computing only those not yet in `cache_dir`."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = [cache_dir / f"{task.key}.parquet" for task in tasks]
    results: list[pl.DataFrame | None] = [pl.read_parquet(p) if p.is_file() else None for p in paths]
    todo = [i for i, result in enumerate(results) if result is None]
    with progress_bar() as progress:
        bar = progress.add_task(label, total=len(tasks), completed=len(tasks) - len(todo))

        def finish(i: int, frame: pl.DataFrame) -> None:
            write_table(frame, paths[i])
            results[i] = frame
            progress.advance(bar)

        if workers <= 1 or len(todo) <= 1:
            for i in todo:
                finish(i, tasks[i].function(*tasks[i].arguments))
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {pool.submit(tasks[i].function, *tasks[i].arguments): i for i in todo}
                for future in as_completed(futures):
                    finish(futures[future], future.result())
    return [result for result in results if result is not None]
