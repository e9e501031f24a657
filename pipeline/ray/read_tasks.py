"""An input of more rows than one read task (read.TASK_ROWS) as a Ray Dataset, read in Ray
tasks of row ranges of the file by our own reader (read.py says why not pyarrow's).

The tasks are pinned to the driver's node, which has the input (the run's plan has just
read it), so no other node needs the file.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import polars as pl
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.job.model import InputPath
from pipeline.ray import read


class InputRows(Datasource):
    """The rows `todo` (input positions, ascending) of the input, in read tasks of
    ranges of them; only `columns` (with the row number and the id) are read."""

    def __init__(
        self, path: InputPath, id_column: str | None, columns: Sequence[str], todo: pl.Series
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.path, self.id_column = path, id_column  # the job's: None, the row number
        self.columns = read.read_columns(id_column, columns)
        self.todo = todo.sort()  # --limit and --retry-errors are in it already

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        per_task = read.TASK_ROWS
        tasks = max(1, min(max(parallelism, 1), math.ceil(len(self.todo) / per_task)))
        size = math.ceil(len(self.todo) / tasks) if len(self.todo) else 0
        reads = []
        for start in range(0, len(self.todo), size or 1):
            rows = self.todo.slice(start, size)
            task = partial(read.read_range, self.path, self.id_column, self.columns, rows)
            meta = BlockMetadata(
                num_rows=len(rows), size_bytes=None, input_files=(str(self.path),), exec_stats=None
            )
            reads.append(ReadTask(task, meta, per_task_row_limit=per_task_row_limit))
        return reads


def input_dataset(
    path: InputPath, id_column: str | None, columns: Sequence[str], todo: pl.Series
) -> Any:
    """The rows to do as a Ray Dataset, read in tasks on this (the driver's) node."""
    rows = InputRows(path, id_column, columns, todo)
    here = ray.get_runtime_context().get_node_id()
    # no CPU asked for: a head node started with --num-cpus=0 (as `ray job submit` setups
    # often are) must still run them; they read a file, mostly waiting on the disk
    if "label_selector" in inspect.signature(ray.data.read_datasource).parameters:
        return ray.data.read_datasource(rows, label_selector={"ray.io/node-id": here}, num_cpus=0)
    strategy = NodeAffinitySchedulingStrategy(here, soft=False)  # Ray before 2.5x
    return ray.data.read_datasource(
        rows, ray_remote_args={"scheduling_strategy": strategy, "num_cpus": 0}
    )


def dataset_shards(
    path: InputPath, id_column: str | None, columns: Sequence[str], todo: pl.Series, count: int
) -> list[tuple[int, tuple[Any, ...]]]:
    """The rows `todo` read in tasks, split in `count` shards (fewer when small): each
    one's rows and its blocks in the object store, in input order."""
    quiet_data()
    dataset = input_dataset(path, id_column, columns, todo)
    parts = []
    for shard in dataset.split(count, equal=False):
        rows = int(shard.count())
        if rows:
            parts.append((rows, tuple(shard.to_arrow_refs())))
    return parts


def quiet_data() -> None:
    """Ray Data's own bars and lines off: the run's bar is the output."""
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.execution_options.verbose_progress = False
