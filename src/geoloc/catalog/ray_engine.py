"""The catalog's tasks (EXIF scans of file lists, shard indexing) as Ray Data tasks.

The same Task objects the local engine runs, executed on a Ray cluster: each becomes
one row of a Ray Dataset (its arguments as JSON), one Ray task calls the task's
function and hands the frame back as Parquet bytes, and `run_cached` writes and merges
it exactly as a local run does. A task whose worker dies is rerun by Ray; a result
that arrives twice is taken once.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import polars as pl

from geoloc.cluster import connect, import_ray, unique_rows
from geoloc.resumable import Task


def _run_tasks(batch: dict[str, np.ndarray], functions: Sequence[Callable[..., pl.DataFrame]]) -> dict[str, list]:
    """Ray Data batch function: call each row's task, its frame serialized as Parquet."""
    results = []
    for function, arguments in zip(batch["function"], batch["arguments"]):
        buffer = io.BytesIO()
        functions[int(function)](*json.loads(arguments)).write_parquet(buffer)
        results.append(buffer.getvalue())
    return {"position": list(batch["position"]), "frame": results}


class RayWorkers:
    """An Executor that runs tasks as Ray Data tasks, one task per block (connects on first use)."""

    def __init__(self, address: str | None = None) -> None:
        import_ray()  # a missing Ray is reported before any work starts
        self.address = address

    def run(self, tasks: Sequence[Task]) -> Iterator[tuple[int, pl.DataFrame]]:
        if not tasks:
            return
        ray = connect(self.address)
        functions = list(dict.fromkeys(task.function for task in tasks))
        items = [_item(position, task, functions.index(task.function)) for position, task in enumerate(tasks)]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            _run_tasks, fn_args=(functions,), batch_size=1)
        for row in unique_rows(dataset.iter_rows(), "position"):
            yield int(row["position"]), pl.read_parquet(io.BytesIO(row["frame"]))

    def __enter__(self) -> RayWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        """The Ray session outlives the build: a cluster is shared, and a local Ray ends with the process."""


def _item(position: int, task: Task, function: int) -> dict[str, Any]:
    try:
        arguments = json.dumps(task.arguments)
    except TypeError as error:
        raise TypeError(f"task {task.key}: its arguments must be JSON (str, int, bool, lists) to travel: "
                        f"{error}") from error
    return {"position": position, "function": function, "arguments": arguments}
