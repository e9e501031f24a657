"""The input's rows still to do, in shards: blocks in the object store (the driver's side;
a worker gets its shard's blocks, rows.py, and never imports Ray Data).

The rows are read by our own reader (input.source: polars, CSV cells as text), not
`ray.data.read_csv` / `read_json`: pyarrow's readers guess types (a CSV column of numbers
becomes numbers, `007` then 7 and `NA` a null; JSON types are taken from the first block)
and skip blank lines, so cells and row numbers would differ from a local run's, and a
prompt must be exactly the cell the user wrote. Rows that fit one read task (TASK_ROWS)
are read by the driver itself and put in the object store, one block a shard: no Ray
Dataset for them (making one runs a task, which starts a worker process for a new driver,
and imports Ray Data: seconds, for a few rows). More are read as a Ray Dataset, in read
tasks of row ranges (read_tasks.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import polars as pl
import pyarrow as pa
import ray

from pipeline.input.source import DEFAULT_ID, scan_rows
from pipeline.job.model import InputPath
from pipeline.schema import ROW_INDEX

TASK_ROWS = 50_000  # rows a read task at least: a CSV or JSONL task parses from the start


def read_columns(id_column: str | None, columns: Sequence[str]) -> list[str]:
    """What is read of each row: its number, its id (the job's: None, the row number) and
    `columns`."""
    return list(dict.fromkeys([ROW_INDEX, id_column or DEFAULT_ID, *columns]))


def read_range(
    path: InputPath, id_column: str | None, columns: list[str], rows: pl.Series
) -> Iterator[pa.Table]:
    """The rows `rows` (ascending positions) of the input, as a local run reads them."""
    low, high = int(rows[0]), int(rows[-1]) + 1
    frame = scan_rows(path, id_column).slice(low, high - low)
    frame = frame.filter(pl.col(ROW_INDEX).is_in(rows.implode())).select(columns)
    for batch in frame.collect_batches(chunk_size=10_000):
        yield batch.to_arrow(compat_level=pl.CompatLevel.oldest())  # plain large_string


def driver_shards(
    path: InputPath, id_column: str | None, columns: Sequence[str], todo: pl.Series, count: int
) -> list[tuple[int, tuple[Any, ...]]]:
    """The rows `todo` (no more than TASK_ROWS) read here and put in the object store in
    `count` shards at most, in input order: each one's rows and its one block."""
    table = pa.concat_tables(
        read_range(path, id_column, read_columns(id_column, columns), todo.sort())
    )
    size = max(1, math.ceil(table.num_rows / count))
    parts = [table.slice(i, size) for i in range(0, table.num_rows, size)]
    return [(part.num_rows, (ray.put(part),)) for part in parts if part.num_rows]
