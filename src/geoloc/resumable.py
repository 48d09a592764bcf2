"""Resumable parallel work: tasks whose results are cached as Parquet files as they finish.

A killed run loses only the tasks in flight; the next run reads the finished ones from
the cache and does the rest. Tasks run on an Executor: Workers here, spawned (not
forked) processes, so the parent's threads (polars, rich) are never copied into them;
or RayWorkers (`geoloc.catalog.ray_engine`) on a Ray cluster. Either way the frames come
back to this process, which writes the cache. Processes started side by side (`torchrun`,
`accelerate launch`) can share one run's cache, each computing its `Share` of the tasks;
a settings file beside the parts keeps a rerun with other settings from mixing into them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from geoloc.progress import progress_bar
from geoloc.tables import write_table, write_text


@dataclass(frozen=True)
class Task:
    """One unit of work: `function(*arguments)` returns a frame, cached under `key`."""

    key: str
    function: Callable[..., pl.DataFrame]
    arguments: tuple[Any, ...]


def cache_key(*parts: object) -> str:
    """A short stable name for a task from what determines its result."""
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=12).hexdigest()


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


@dataclass(frozen=True)
class Share:
    """This process's part of a run split across processes: the tasks at positions rank, rank + world, ..."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Share:
        """The share a launcher (`torchrun`, `accelerate launch`) gives this process: RANK of WORLD_SIZE
        (LOCAL_RANK of LOCAL_WORLD_SIZE where only those are set); the whole run otherwise."""
        rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
        world = os.environ.get("WORLD_SIZE", os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if not (rank.isdigit() and world.isdigit() and int(rank) < int(world)):
            raise ValueError(f"RANK={rank!r} and WORLD_SIZE={world!r}: expected 0 <= RANK < WORLD_SIZE")
        return cls(int(rank), int(world))

    def takes(self, position: int) -> bool:
        return position % self.world == self.rank


def cache_paths(tasks: Sequence[Task], cache_dir: Path) -> list[Path]:
    """Where each task's frame is kept."""
    return [cache_dir / f"{task.key}.parquet" for task in tasks]


def run_cached(tasks: Sequence[Task], cache_dir: Path, workers: Executor, label: str | None,
               share: Share = Share()) -> list[pl.DataFrame]:
    """The tasks' frames in task order, computing only those of `share` not yet in `cache_dir`.

    With the whole run as the share, every task's frame; otherwise those of the other
    shares that were already done when it started. `label` None: no progress bar of its
    own (the tasks report their progress).
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = cache_paths(tasks, cache_dir)
    results: list[pl.DataFrame | None] = [pl.read_parquet(p) if p.is_file() else None for p in paths]
    todo = [i for i, result in enumerate(results) if result is None and share.takes(i)]
    with progress_bar(transient=False) if label is not None else contextlib.nullcontext() as progress:
        mine = [i for i in range(len(tasks)) if share.takes(i)]
        bar = progress.add_task(label, total=len(mine), completed=len(mine) - len(todo)) if progress else None
        for position, frame in workers.run([tasks[i] for i in todo]):
            write_table(frame, paths[todo[position]])
            results[todo[position]] = frame
            if progress:
                progress.advance(bar)
    return [result for result in results if result is not None]


def record_settings(path: Path, settings: dict[str, Any]) -> list[str]:
    """Write what a resumable run is made with to `path` (JSON), or name the settings in which the run
    recorded there differs (none: the same run, whose finished parts may be reused)."""
    settings = json.loads(json.dumps(settings))
    if not path.is_file():
        write_text(path, json.dumps(settings, indent=2) + "\n")
        return []
    previous = json.loads(path.read_text())
    return sorted(key for key in settings.keys() | previous.keys() if previous.get(key) != settings.get(key))


def file_digest(path: Path) -> str:
    """A content hash of one file, read in blocks."""
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ResumeError(ValueError):
    """A work folder holds the parts of a run made with other settings."""


def work_folder(out: Path) -> Path:
    """Where a resumable run keeps its finished parts: beside its output, removed once that is written."""
    return out.with_name(out.name + ".parts")


def claim_work_folder(folder: Path, settings: dict[str, Any], restart: bool = False) -> None:
    """Make `folder` the work folder of a run with `settings`; its parts are reused only by the same run.

    `restart` discards what a previous run left there first.
    """
    if restart:
        shutil.rmtree(folder, ignore_errors=True)
    changed = record_settings(folder / "settings.json", settings)
    if changed:
        raise ResumeError(f"{folder} holds the parts of a run with other settings (different {', '.join(changed)}); "
                          "rerun with --restart to discard them, or write to another --out")


def remove_work_folder(folder: Path) -> None:
    """Remove a work folder that another process may be removing too: renamed away first, so only one does."""
    removing = folder.with_name(f".{folder.name}.{os.getpid()}.removing")
    try:
        folder.rename(removing)
    except FileNotFoundError:
        return
    shutil.rmtree(removing)


def model_identity(model: str | Path) -> dict[str, Any]:
    """A model folder's files by size and modification time (weights are too big to hash on every run);
    a hub id as given."""
    folder = Path(model)
    if not folder.is_dir():
        return {"id": str(model)}
    return {"path": str(folder.resolve()),
            "files": {str(f.relative_to(folder)): [f.stat().st_size, f.stat().st_mtime_ns]
                      for f in sorted(folder.rglob("*")) if f.is_file()}}
