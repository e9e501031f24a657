"""A DataFrame as a run's input (the Python API): a polars DataFrame or LazyFrame, a
pandas DataFrame (when pandas is installed; it is not a dependency) or a pyarrow Table.

Resume needs an input that stays put, so the frame is written once, as the output's input
snapshot (OUTPUT/input.parquet, store.layout), and the run reads that file like any other
input: its content digest goes into job.json, and rows are ids or positions in it. The
frame's own digest (of its Arrow data: the same rows, columns and types give the same
digest, whatever kind of frame carried them) is kept in the snapshot's metadata; a later
call with a different frame on the same output is refused, as a changed input file is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UsageError
from pipeline.store import durable
from pipeline.store.layout import INPUT_SNAPSHOT

DIGEST_KEY = b"pipeline.frame_digest"
KINDS = "a polars DataFrame or LazyFrame, a pandas DataFrame or a pyarrow Table"


def is_frame(value: object) -> bool:
    """Whether `value` is a frame this module takes (not a path)."""
    if isinstance(value, pl.DataFrame | pl.LazyFrame | pa.Table):
        return True
    return type(value).__module__.split(".")[0] == "pandas" and hasattr(value, "columns")


def as_polars(value: Any) -> pl.DataFrame:
    """The frame as a polars DataFrame (a LazyFrame collected)."""
    try:
        if isinstance(value, pl.DataFrame):
            return value
        if isinstance(value, pl.LazyFrame):
            return value.collect()
        # pandas: the index is not a column (reset_index() first to keep it)
        frame = pl.from_arrow(value) if isinstance(value, pa.Table) else pl.from_pandas(value)
    except (pl.exceptions.PolarsError, pa.ArrowException, ImportError, TypeError) as e:
        raise UsageError(f"input: cannot take this {type(value).__name__}: {e}") from None
    assert isinstance(frame, pl.DataFrame)
    return frame


def frame_digest(frame: pl.DataFrame) -> str:
    """sha256 of the frame's Arrow IPC stream: its columns, types and values."""
    sink = pa.BufferOutputStream()
    table = frame.to_arrow()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def snapshot_input(value: Any, output: Path) -> Path:
    """The frame as OUTPUT/input.parquet, written the first time; the same frame again
    finds it there; another is refused (UsageError, one line)."""
    frame = as_polars(value)
    if frame.width == 0:
        raise UsageError("input: the frame has no columns")
    digest = frame_digest(frame)
    path = output / INPUT_SNAPSHOT
    if path.exists():
        kept = (pq.read_schema(path).metadata or {}).get(DIGEST_KEY, b"").decode()
        if kept != digest:
            raise UsageError(
                f"input: this frame differs from the one {output} was run with (kept in "
                f"{path}): another output, or fresh=True to set the earlier results aside"
            )
        return path
    table = frame.to_arrow()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), DIGEST_KEY: digest})
    output.mkdir(parents=True, exist_ok=True)
    durable.write_with(path, lambda temporary: pq.write_table(table, temporary))
    return path
