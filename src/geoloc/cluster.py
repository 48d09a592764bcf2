"""Running stages on a Ray cluster: the one place that imports Ray and connects to it.

Ray is an optional extra (`pip install 'geoloc[ray]'`); nothing imports this module
unless `--engine ray` is asked for, so `import geoloc` and the command line stay fast
without it. The Ray engines only execute the local engine's own functions elsewhere:
results come back as Parquet or npy bytes (never pickled data) and are written and
merged by the same code as a local run.

Fault tolerance is Ray Data's: a task whose worker process dies (killed, out of
memory, a lost node) is rerun, and a dead actor is restarted (its constructor runs
again) with its unfinished batches resubmitted (Ray Data's defaults: `max_retries=-1`
for tasks, `max_restarts=-1` and `max_task_retries=-1` for actors). A Python
exception is not retried: it is a bug or bad input, and it stops the run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

ENGINES = ("local", "ray")
"""Values of `--engine`."""


class ClusterError(RuntimeError):
    """Ray is missing, or the cluster cannot be reached."""


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ClusterError(f"--engine {engine!r}: expected one of {', '.join(ENGINES)}")
    return engine


def import_ray() -> Any:
    """The `ray` module with Ray Data, or a ClusterError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is a separate extra of ray)
    except ImportError as error:
        raise ClusterError(
            f"--engine ray needs Ray Data ({error}); install it with `pip install 'geoloc[ray]'` "
            "(or `pip install 'ray[data]'`) on this machine and on every node of the cluster"
        ) from error
    return ray


def connect(address: str | None = None) -> Any:
    """Ray, initialized once: the running session if any, else `address` (None starts a local Ray).

    `address` is what `ray.init` takes: `auto` (the cluster this machine belongs to),
    `ray://HEAD:10001` (Ray Client) or `HEAD:6379`. Ray Data's own progress bars are
    turned off so that every engine shows the same bars.
    """
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = f"the Ray cluster at {address!r}" if address else "a local Ray"
            raise ClusterError(f"cannot start or reach {where}: {error}") from error
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # its "bars disabled" notice
    return ray


def cluster_gpus() -> float:
    """GPUs the connected cluster has in all."""
    return float(import_ray().cluster_resources().get("GPU", 0.0))


def unique_rows(rows: Iterator[dict[str, Any]], *key: str) -> Iterator[dict[str, Any]]:
    """Rows of a Ray Data result, each `key` once: a retried task may hand back what it already gave."""
    seen: set[tuple[Any, ...]] = set()
    for row in rows:
        identity = tuple(row[name] for name in key)
        if identity not in seen:
            seen.add(identity)
            yield row
