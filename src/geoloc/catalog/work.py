"""Resumable parallel work: tasks whose results are cached as Parquet files as they finish.

A killed run loses only the tasks in flight; the next run reads the finished ones from
the cache and does the rest. Tasks run on an Executor: Workers here, spawned (not
forked) processes, so the parent's threads (polars, rich) are never copied into them;
or RayWorkers (geoloc.catalog.ray_engine) on a Ray cluster. Either way the frames come
back to this process, which writes the cache.
"""

from __future__ import annotations

import hashlib
import importlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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


class Executor(Protocol):
    """Runs tasks somewhere: this machine's processes (Workers) or a Ray cluster (geoloc.catalog.ray_engine)."""

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[int, pl.DataFrame]]:
        """(position in `tasks`, frame) for each task, once each, in the order they finish."""
        ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


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

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[int, pl.DataFrame]]:
        pool = self.pool() if len(tasks) > 1 else None
        if pool is None:
            for position, task in enumerate(tasks):
                yield position, task.function(*task.arguments)
            return
        futures = {pool.submit(task.function, *task.arguments): position for position, task in enumerate(tasks)}
        for future in as_completed(futures):
            yield futures[future], future.result()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def run_cached(tasks: Sequence[Task], cache_dir: Path, workers: Executor, label: str) -> list[pl.DataFrame]:
    """The tasks' frames in task order, computing only those not yet in `cache_dir`."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = [cache_dir / f"{task.key}.parquet" for task in tasks]
    results: list[pl.DataFrame | None] = [pl.read_parquet(p) if p.is_file() else None for p in paths]
    todo = [i for i, result in enumerate(results) if result is None]
    with progress_bar() as progress:
        bar = progress.add_task(label, total=len(tasks), completed=len(tasks) - len(todo))
        for position, frame in workers.run([tasks[i] for i in todo]):
            write_table(frame, paths[todo[position]])
            results[todo[position]] = frame
            progress.advance(bar)
    return [result for result in results if result is not None]
