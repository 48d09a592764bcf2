"""Resumable parallel work: tasks whose results are cached as Parquet files as they finish.

A killed run loses only the tasks in flight; the next run reads the finished ones from
the cache and does the rest. Workers are spawned (not forked) processes, so the
parent's threads (polars, rich) are never copied into them.
"""

from __future__ import annotations

import hashlib
import importlib
import multiprocessing
import os
import time
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


def _import(modules: tuple[str, ...]) -> int:
    for module in modules:
        importlib.import_module(module)
    time.sleep(0.05)
    return os.getpid()


class Workers:
    """Spawned worker processes shared by every step of a run, started once, on first need."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._pool: ProcessPoolExecutor | None = None

    def pool(self) -> ProcessPoolExecutor | None:
        """The pool, or None when work should run in this process."""
        if self.count <= 1:
            return None
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.count, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def start(self, *modules: str) -> None:
        """Start every worker now and import `modules` in each (so timings exclude start-up)."""
        pool = self.pool()
        if pool is not None:
            list(pool.map(_import, [modules] * self.count))

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def run_cached(tasks: Sequence[Task], cache_dir: Path, workers: Workers, label: str) -> list[pl.DataFrame]:
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

        pool = workers.pool() if len(todo) > 1 else None
        if pool is None:
            for i in todo:
                finish(i, tasks[i].function(*tasks[i].arguments))
        else:
            futures = {pool.submit(tasks[i].function, *tasks[i].arguments): i for i in todo}
            for future in as_completed(futures):
                finish(futures[future], future.result())
    return [result for result in results if result is not None]
