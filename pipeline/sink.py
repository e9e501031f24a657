"""The output: schema, part files written as rows finish, and the final results.parquet.

Finished rows are buffered and written as Parquet part files (temporary name, then
`os.replace`), off the event loop, so memory stays flat and a crash never leaves a torn
file. `finalize` merges the parts into `results.parquet` in input order (a row re-done in
a later part replaces its earlier outcome), again via a temporary name and a rename.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.pricing import COST_COLUMNS
from pipeline.source import ROW_INDEX

TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
)
RESULT_FIELDS: tuple[pa.Field, ...] = (
    pa.field("status", pa.string()),
    pa.field("response_text", pa.string()),
    pa.field("content_json", pa.string()),
    pa.field("stop_reason", pa.string()),
    pa.field("model", pa.string()),
    *(pa.field(name, pa.int64()) for name in TOKEN_COLUMNS),
    *(pa.field(name, pa.float64()) for name in COST_COLUMNS),
    pa.field("http_status", pa.int64()),
    pa.field("error_type", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("attempts", pa.int64()),
    pa.field("request_id", pa.string()),
    pa.field("latency_ms", pa.float64()),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
    pa.field("price_table_version", pa.string()),
)
RESULTS_FILE = "results.parquet"
PARTS_DIR = "parts"


def output_schema(input_fields: Sequence[pa.Field], label_column: str) -> pa.Schema:
    """Id and kept input columns, the result columns, then the label columns."""
    labels = (
        pa.field(label_column, pa.string()),
        pa.field("label_status", pa.string()),
        pa.field("label_error", pa.string()),
    )
    return pa.schema([*input_fields, *RESULT_FIELDS, *labels])


def part_schema(schema: pa.Schema) -> pa.Schema:
    return schema.insert(0, pa.field(ROW_INDEX, pa.int64()))


class ResultSink:
    def __init__(self, out_dir: Path, schema: pa.Schema, *, rows_per_part: int = 5000) -> None:
        self.schema = schema
        self.parts_dir = out_dir / PARTS_DIR
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.results_path = out_dir / RESULTS_FILE
        self.rows_per_part = rows_per_part
        self._part_schema = part_schema(schema)
        self._buffer: list[dict[str, Any]] = []
        self._next_part = 1 + max((_part_number(p) for p in self.part_files()), default=0)
        self._writing: asyncio.Task[None] | None = None

    def part_files(self) -> list[Path]:
        return sorted(self.parts_dir.glob("part-*.parquet"), key=_part_number)

    def add(self, record: dict[str, Any]) -> None:
        """Buffer a finished row; a full buffer is written in the background."""
        self._buffer.append(record)
        if len(self._buffer) >= self.rows_per_part and self._writing is None:
            self._writing = asyncio.create_task(self._write_buffer())

    async def _write_buffer(self) -> None:
        try:
            while len(self._buffer) >= self.rows_per_part:
                rows, self._buffer = self._buffer, []
                await asyncio.to_thread(self.write_part, rows)
        finally:
            self._writing = None

    async def flush(self) -> None:
        """Write everything buffered, waiting for a background write in progress."""
        if self._writing is not None:
            await self._writing
        if self._buffer:
            rows, self._buffer = self._buffer, []
            await asyncio.to_thread(self.write_part, rows)

    def write_part(self, rows: list[dict[str, Any]]) -> None:
        table = pa.Table.from_pylist(rows, schema=self._part_schema)
        number = self._next_part
        self._next_part += 1
        final = self.parts_dir / f"part-{number:06d}.parquet"
        temporary = final.with_name(f".{final.name}.tmp")
        pq.write_table(table, temporary)
        os.replace(temporary, final)

    def finalize(self) -> Path:
        """Merge every part into results.parquet, in input order, one row per input row."""
        temporary = self.results_path.with_name(f".{RESULTS_FILE}.tmp")
        parts = self.part_files()
        if parts:
            merged = (
                pl.concat([pl.scan_parquet(p) for p in parts], how="vertical")
                .unique(subset=[ROW_INDEX], keep="last", maintain_order=True)
                .sort(ROW_INDEX)
                .drop(ROW_INDEX)
            )
            merged.sink_parquet(temporary)
        else:
            pq.write_table(self.schema.empty_table(), temporary)
        os.replace(temporary, self.results_path)
        return self.results_path


def _part_number(path: Path) -> int:
    return int(path.stem.split("-")[1])
