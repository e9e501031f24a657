"""The input as a Ray Dataset: the rows still to do, read in Ray tasks (the driver's side;
a worker gets its shard's blocks, rows.py, and never imports Ray Data).

The read tasks run our own reader (input.source: polars, CSV cells as text) on row ranges
of the file, not `ray.data.read_csv` / `read_json`: pyarrow's readers guess types (a CSV
column of numbers becomes numbers, `007` then 7 and `NA` a null; JSON types are taken from
the first block) and skip blank lines, so cells and row numbers would differ from a local
run's, and a prompt must be exactly the cell the user wrote. The tasks are pinned to the
driver's node, which has the input (the run's plan has just read it), so no other node
needs the file. Rows that fit one task (TASK_ROWS) are read by the driver itself, with the
same reader: a read task would start a worker process for them, and wait for its imports.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import polars as pl
import pyarrow as pa
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.input.source import DEFAULT_ID, scan_rows
from pipeline.job.model import InputPath
from pipeline.schema import ROW_INDEX

TASK_ROWS = 50_000  # rows a read task at least: a CSV or JSONL task parses from the start


class InputRows(Datasource):
    """The rows `todo` (input positions, ascending) of the input, in read tasks of
    ranges of them; only `columns` (with the row number and the id) are read."""

    def __init__(
        self, path: InputPath, id_column: str | None, columns: Sequence[str], todo: pl.Series
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.path, self.id_column = path, id_column  # the job's: None, the row number
        self.columns = list(dict.fromkeys([ROW_INDEX, id_column or DEFAULT_ID, *columns]))
        self.todo = todo.sort()  # --limit and --retry-errors are in it already

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        tasks = max(1, min(max(parallelism, 1), math.ceil(len(self.todo) / TASK_ROWS)))
        size = math.ceil(len(self.todo) / tasks) if len(self.todo) else 0
        reads = []
        for start in range(0, len(self.todo), size or 1):
            rows = self.todo.slice(start, size)
            read = partial(read_range, self.path, self.id_column, self.columns, rows)
            meta = BlockMetadata(
                num_rows=len(rows), size_bytes=None, input_files=(str(self.path),), exec_stats=None
            )
            reads.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return reads


def read_range(
    path: InputPath, id_column: str | None, columns: list[str], rows: pl.Series
) -> Iterator[pa.Table]:
    """The rows `rows` (ascending positions) of the input, as a local run reads them."""
    low, high = int(rows[0]), int(rows[-1]) + 1
    frame = scan_rows(path, id_column).slice(low, high - low)
    frame = frame.filter(pl.col(ROW_INDEX).is_in(rows.implode())).select(columns)
    for batch in frame.collect_batches(chunk_size=10_000):
        yield batch.to_arrow(compat_level=pl.CompatLevel.oldest())  # plain large_string


def input_dataset(
    path: InputPath, id_column: str | None, columns: Sequence[str], todo: pl.Series, blocks: int
) -> Any:
    """The rows to do as a Ray Dataset, read on this (the driver's) node: in read tasks,
    or by the driver itself when they fit one (no worker process started, and its imports
    waited for, to read a few rows), put in `blocks` blocks, one a shard."""
    rows = InputRows(path, id_column, columns, todo)
    if len(rows.todo) <= TASK_ROWS:
        table = pa.concat_tables(read_range(path, id_column, rows.columns, rows.todo))
        size = max(1, math.ceil(table.num_rows / blocks))
        return ray.data.from_arrow([table.slice(i, size) for i in range(0, table.num_rows, size)])
    here = ray.get_runtime_context().get_node_id()
    # no CPU asked for: a head node started with --num-cpus=0 (as `ray job submit` setups
    # often are) must still run them; they read a file, mostly waiting on the disk
    if "label_selector" in inspect.signature(ray.data.read_datasource).parameters:
        return ray.data.read_datasource(rows, label_selector={"ray.io/node-id": here}, num_cpus=0)
    strategy = NodeAffinitySchedulingStrategy(here, soft=False)  # Ray before 2.5x
    return ray.data.read_datasource(
        rows, ray_remote_args={"scheduling_strategy": strategy, "num_cpus": 0}
    )


def quiet_data() -> None:
    """Ray Data's own bars and lines off: the run's bar is the output."""
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.execution_options.verbose_progress = False
