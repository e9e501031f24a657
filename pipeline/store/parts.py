"""Part files: Parquet written so it can be trusted later, and checked before a resume.

Every page carries a CRC (`write_page_checksum`), and a resume reads every part whole with
the CRCs verified (part_check.py: started ahead, beside the command's imports) before
anything is sent: a part truncated or with flipped bytes is found then, named, and can be
set aside (`--set-aside-damaged`: moved to `damaged/`, never deleted), instead of the run
paying for every remaining row and failing at the merge.

A record whose value does not fit its column (an integer beyond 64 bits in a label, from
a journal written by an earlier version) must not make a journal unfoldable: such a value
is dropped to null and the row's label marked invalid, saying why; the paid answer stays.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

from pipeline.errors import UsageError
from pipeline.schema import ROW_INDEX
from pipeline.store import durable
from pipeline.store.layout import DAMAGED_DIR
from pipeline.store.part_check import CONVERSION_ERRORS
from pipeline.store.part_check import damage as damage
from pipeline.store.part_check import damaged_parts as damaged_parts
from pipeline.store.part_check import remember_part as remember_part

MANIFEST_KEY = b"pipeline.job"  # part metadata: the job.json content that made the part


def write_part(final: Path, write: Callable[[Path], object]) -> None:
    """A part file written whole or not at all (durable.write_with), then remembered as
    intact (part_check.INTACT_RECORD): a resume hashes it instead of reading it whole."""
    durable.write_with(final, write)
    remember_part(final)


def write_parquet(table: pa.Table, path: Path, row_group_size: int | None = None) -> None:
    pq.write_table(table, path, write_page_checksum=True, row_group_size=row_group_size)


def table_of_records(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """The records as a table of `schema`; values that cannot fit are conformed."""
    try:
        return pa.Table.from_pylist(list(rows), schema=schema)
    except CONVERSION_ERRORS:
        return pa.Table.from_pylist([conform(r, schema) for r in rows], schema=schema)


JOURNAL_BLOCK_BYTES = 4 * 1024 * 1024  # a journal line longer than this: the careful path


def table_of_journal(path: Path, schema: pa.Schema) -> pa.Table | None:
    """A journal file as a table of `schema`, read by Arrow's JSON reader: no Python object
    a row, and none of pyarrow's list conversions (they import pandas, when installed: 50
    MB of a run's memory). None when a line needs `table_of_records`' careful reading: a
    torn or garbled line, a value that does not fit its column, a line over a block."""
    as_read = pa.schema(  # a record's time is its microseconds (outcome.py)
        [pa.field(f.name, pa.int64()) if pa.types.is_timestamp(f.type) else f for f in schema]
    )
    options = pj.ParseOptions(explicit_schema=as_read, unexpected_field_behavior="ignore")
    reading = pj.ReadOptions(use_threads=False, block_size=JOURNAL_BLOCK_BYTES)
    try:
        if path.stat().st_size == 0:
            return schema.empty_table()
        batches = list(pj.open_json(path, read_options=reading, parse_options=options))
        return pa.Table.from_batches(batches, schema=as_read).cast(schema)
    except (pa.ArrowException, OverflowError, ValueError):
        return None


def conform(record: dict[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """`record` with every value that does not fit its column set to null; when a label
    column was among them, the label is `invalid` and `label_error` says which."""
    out = dict(record)
    misfits = []
    for field in schema:
        value = out.get(field.name)
        if value is None:
            continue
        try:
            pa.array([value], field.type)
        except CONVERSION_ERRORS:
            out[field.name] = None
            misfits.append(f"{field.name} = {str(value)[:40]} does not fit {field.type}")
    if misfits and "label_status" in schema.names:
        out["label_status"] = "invalid"
        out["label_error"] = "; ".join(misfits)
    return out


def read_part(part: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """A part (or results.parquet) read whole, or only `columns` (its CRCs checked:
    part_check.py). Every read of a part goes through ParquetFile, never `pq.read_table`,
    which imports pyarrow.dataset: 45 MB of a run's peak memory for nothing."""
    with pq.ParquetFile(part) as file:
        return file.read(columns=list(columns) if columns is not None else None)


def check_or_set_aside(
    parts: Sequence[Path],
    out_dir: Path,
    *,
    set_aside_damaged: bool,
    salvage: Callable[[], int],
    results: Path,
) -> None:
    """Every part must read whole before it is used: a damaged one is named in one line
    (exit 2), or with `set_aside_damaged` moved to OUT/damaged/ (kept, never deleted) and
    its rows taken back by `salvage` from `results` where that reads whole; the rest are
    sent again. The one check for an output's own parts and a Ray shard's."""
    damaged = damaged_parts(parts)
    if not damaged:
        return
    part, why = damaged[0]
    if not set_aside_damaged:
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise UsageError(
            f"{part} is damaged: {why}{more}; run again with --set-aside-damaged to move "
            f"it to {out_dir / DAMAGED_DIR} (kept, not deleted) and send only its rows again"
        )
    target = set_aside([p for p, _ in damaged], out_dir)
    recovered = salvage()
    names = ", ".join(str(p) for p, _ in damaged)
    print(
        f"warning: moved damaged {names} to {target}; {recovered:,} of its rows recovered "
        f"from {results}, the others will be sent again",
        file=sys.stderr,
    )


def set_aside(parts: Sequence[Path], out_dir: Path) -> Path:
    """Move damaged parts to OUT/damaged/ (never deleted: the bytes may still be salvaged)."""
    target = out_dir / DAMAGED_DIR
    target.mkdir(exist_ok=True)
    for part in parts:
        destination = target / part.name
        counter = 1
        while destination.exists():
            counter += 1
            destination = target / f"{part.stem}-{counter}{part.suffix}"
        os.replace(part, destination)
    durable.sync_directory(target)
    durable.sync_directory(parts[0].parent if parts else out_dir)
    return target


class PartWindows:
    """A part read one window of input positions at a time: only the row groups whose
    `_row` statistics meet the window are read (a group without statistics always is),
    then the rows outside the window are dropped. The file is opened once for every
    window, and closed by `close`."""

    def __init__(self, part: Path) -> None:
        self.file = pq.ParquetFile(part)
        metadata = self.file.metadata
        column = metadata.schema.names.index(ROW_INDEX)
        self.groups: list[tuple[int, int] | None] = []
        self.has_nulls: list[bool] = []  # a row without a position: the window drops it
        for group in range(metadata.num_row_groups):
            stats = metadata.row_group(group).column(column).statistics
            known = stats is not None and stats.has_min_max
            self.groups.append((int(stats.min), int(stats.max)) if known else None)
            self.has_nulls.append(not known or not stats.has_null_count or stats.null_count > 0)

    def row_range(self) -> tuple[int, int]:
        """The lowest and highest input position in the part ((0, -1): none)."""
        if any(g is None for g in self.groups):
            import pyarrow.compute as pc  # here: 50 ms of every run's start otherwise

            rows = self.file.read(columns=[ROW_INDEX]).column(0)
            if not len(rows):
                return 0, -1
            return int(pc.min(rows).as_py()), int(pc.max(rows).as_py())
        known = [g for g in self.groups if g is not None]
        return (min(g[0] for g in known), max(g[1] for g in known)) if known else (0, -1)

    def read(self, start: int, stop: int) -> pa.Table | None:
        """The part's rows at input positions start <= _row < stop (None: it holds none)."""
        meets = [
            i for i, g in enumerate(self.groups) if g is None or (g[0] < stop and g[1] >= start)
        ]
        if not meets:
            return None
        table = self.file.read_row_groups(meets, use_threads=False)
        if all(self._within(i, start, stop) for i in meets):
            return table  # no row to drop: no filter, and no copy of every column it makes
        rows = pl.Series(table.column(ROW_INDEX))  # polars: pyarrow would import pandas
        return table.filter(rows.is_between(start, stop, closed="left").to_arrow())

    def _within(self, group: int, start: int, stop: int) -> bool:
        """Whether every row of the group is known to be in the window."""
        span = self.groups[group]
        return span is not None and not self.has_nulls[group] and start <= span[0] <= span[1] < stop

    def close(self) -> None:
        self.file.close()
