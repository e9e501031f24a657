"""The output: schema, the journal folded into part files, and the final results.parquet.

Finished rows are journaled at once (journal.py) and folded into Parquet part files
(temporary name, then `os.replace`) off the event loop, so memory stays flat and a crash
never leaves a torn file. `finalize` merges the parts into `results.parquet` in input
order (a row re-done in a later part replaces its earlier outcome), again via a temporary
name and a rename.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import JobStopped
from pipeline.schema import ROW_INDEX
from pipeline.store import durable
from pipeline.store.journal import (
    LIVE,
    SEALED_GLOB,
    Journal,
    fsync_and_close,
    read_records,
    sealed_name,
    sealed_number,
)
from pipeline.store.layout import PARTS_DIR, RESULTS_FILE, part_files, part_name, part_number
from pipeline.store.parts import (
    MANIFEST_KEY,
    PartWindows,
    table_of_journal,
    table_of_records,
    write_parquet,
    write_part,
)

WRITE_RETRY_S = 60.0  # after a write error, how long paid answers are offered to the disk
WRITE_RETRY_ENV = "PIPELINE_WRITE_RETRY_S"
MAX_PARTS = 32  # more part files than this are merged into one when a run ends
MERGE_WINDOW = 20_000  # input positions merged at a time: bounds memory at any size
PART_ROW_GROUP = 1_000  # rows a row group of a part


def part_schema(schema: pa.Schema, manifest: bytes | None = None) -> pa.Schema:
    """A part's schema: the input position first; job.json's content in its metadata, so
    a lost job.json can be rebuilt from any part."""
    schema = schema.insert(0, pa.field(ROW_INDEX, pa.int64()))
    return schema.with_metadata({MANIFEST_KEY: manifest}) if manifest else schema


class ResultSink:
    """Finished rows go to the journal at once; full journals are folded into part files.

    Folding (sealed journal -> part file -> sealed journal removed) is safe to interrupt at
    any step: a sealed journal whose part exists is just removed, otherwise folded again.
    """

    def __init__(
        self,
        out_dir: Path,
        schema: pa.Schema,
        *,
        rows_per_part: int = 20_000,
        manifest: bytes | None = None,
    ) -> None:
        self.schema = schema
        self.out_dir = out_dir
        self.parts_dir = out_dir / PARTS_DIR
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.results_path = out_dir / RESULTS_FILE
        self.rows_per_part = rows_per_part
        self.part_schema = part_schema(schema, manifest)
        self._numbered = 0  # the highest part number handed out (next_part_number)
        self.closing = False  # close() began: no journal is sealed any more (fold_now)
        self.fold_pending()  # what a crashed run left in journals becomes part files first
        self.journal = Journal(out_dir)
        self._folding: set[asyncio.Task[None]] = set()
        self.unwritten: list[dict[str, Any]] = []  # paid rows the disk refused, kept here
        self.write_error: OSError | None = None  # the first one; the run stops on it
        self.on_write_error: Callable[[OSError], None] = lambda error: None
        # what stops the run writing here (its runner's stop), for what writes beside it
        self.on_stop: Callable[[JobStopped], None] = lambda reason: None
        # an output URL's lease, renewed when due by an engine that holds the event loop
        # (a --ray driver: remote.LeaseKeeper); the stop to make if it could run out
        self.keep_lease: Callable[[], JobStopped | None] = lambda: None
        self.write_retry_s = float(os.environ.get(WRITE_RETRY_ENV) or WRITE_RETRY_S)

    def part_files(self) -> list[Path]:
        return part_files(self.out_dir)

    def next_part_number(self) -> int:
        """A number for a new part or sealed journal, handed out once. The listing alone
        is not enough: a fold in the background renames its part in, then removes its
        sealed journal, and a listing between the two sees neither; the same number again
        would name a sealed journal whose fold finds the part already there and removes
        the journal, its rows with it."""
        numbers = [part_number(p) for p in self.part_files()]
        numbers += [sealed_number(p) for p in self.out_dir.glob(SEALED_GLOB)]
        self._numbered = max([*numbers, self._numbered]) + 1
        return self._numbered

    def add(self, record: dict[str, Any]) -> None:
        """Journal a finished row now; a full journal is folded in the background.

        Never raises for a local write error: the record is kept in memory (it is paid
        for), `on_write_error` stops the run, and `close` offers it to the disk again.
        """
        if self.unwritten:  # keep the journal's order: nothing overtakes a kept record
            self.unwritten.append(record)
            return
        try:
            self.journal.append(record)
        except OSError as e:
            self.unwritten.append(record)
            self._failed(e)
            return
        if self.journal.rows >= self.rows_per_part:
            self._seal_and_fold()

    def _seal_and_fold(self) -> None:
        """The live journal sealed, and folded into a part in the background."""
        try:
            sealed = self.journal.seal(self.next_part_number())
        except OSError as e:  # its rows are journaled; the journal just stays live
            self._failed(e)
            return
        task = asyncio.create_task(asyncio.to_thread(self.fold, sealed))
        self._folding.add(task)
        task.add_done_callback(self._folded)

    async def fold_now(self) -> None:
        """Whatever the live journal holds, folded into a part now, and every fold done:
        an output at a URL is put as parts, never as a journal (store.remote). Once
        `close` has begun, close folds the rest: sealing its closed journal would race it."""
        if self.closing:
            return
        if self.journal.rows and not self.unwritten:
            self._seal_and_fold()
        await self.drain_folds(keep=0)

    async def drain_folds(self, keep: int = 1) -> None:
        """Wait while more than `keep` folds are in progress: a writer faster than the
        folds (a batch's results, read at disk speed) would otherwise hold every sealed
        journal's rows in memory at once."""
        while len(self._folding) > keep:
            await asyncio.wait(set(self._folding), return_when=asyncio.FIRST_COMPLETED)

    def _folded(self, task: asyncio.Task[None]) -> None:
        """A background fold ended; one the disk refused stops the run at once (its sealed
        journal stays and is folded by the next run)."""
        self._folding.discard(task)
        error = None if task.cancelled() else task.exception()
        if isinstance(error, OSError):
            self._failed(error)

    def _failed(self, error: OSError) -> None:
        if self.write_error is None:
            self.write_error = error
            self.on_write_error(error)

    async def keep_synced(self, every_s: float = 1.0) -> None:
        """fsync the journal at least every `every_s` while rows arrive (run as a task)."""
        while True:
            await asyncio.sleep(every_s)
            handle = self.journal.sync_handle()
            if handle is not None:
                try:
                    await asyncio.to_thread(fsync_and_close, handle)
                except OSError as e:
                    self._failed(e)

    async def close(self) -> None:
        """Wait for folds in progress, journal what the disk refused (trying again for up
        to `write_retry_s`), then fold the live journal too. OSError while the disk refuses
        (then `unwritten` holds the paid answers it never took)."""
        self.closing = True
        if self._folding:  # a fold the disk refuses reports itself (_folded)
            await asyncio.gather(*self._folding, return_exceptions=True)
        await self._journal_unwritten(self.write_retry_s)
        try:
            self.journal.close()
            await asyncio.to_thread(self.fold_pending)
        except OSError as e:
            self._failed(e)
            raise
        if self.unwritten:
            assert self.write_error is not None
            raise self.write_error

    async def _journal_unwritten(self, retry_s: float) -> None:
        """Offer the kept records to the disk once a second until they fit or time runs out."""
        deadline = time.monotonic() + retry_s
        while self.unwritten:
            try:
                while self.unwritten:
                    self.journal.append(self.unwritten[0])
                    self.unwritten.pop(0)
                self.journal.sync()
            except OSError:
                if time.monotonic() >= deadline:
                    return
                await asyncio.sleep(1.0)

    def fold_pending(self) -> None:
        """Fold every sealed journal, and a live one left by a crash, into part files."""
        live = self.out_dir / LIVE
        if live.exists() and live.stat().st_size > 0:
            os.replace(live, self.out_dir / sealed_name(self.next_part_number()))
            durable.sync_directory(self.out_dir)
        for sealed in sorted(self.out_dir.glob(SEALED_GLOB), key=sealed_number):
            self.fold(sealed)

    def fold(self, sealed: Path) -> None:
        """Sealed journal -> part file. The part is on disk (fsync'd, and its directory)
        before the journal, until then the rows' only copy, is removed."""
        part = self.parts_dir / part_name(sealed_number(sealed))
        if not part.exists():  # else a crash came after the part was written: done already
            table = table_of_journal(sealed, self.part_schema)
            if table is None:  # a line Arrow's reader refuses: a record at a time
                self.write_part(part, read_records(sealed))
            else:
                self._write_sorted(part, table)
        sealed.unlink()
        durable.sync_directory(self.out_dir)
        give_back_freed_memory()

    def write_part(self, final: Path, records: Iterable[dict[str, Any]]) -> None:
        """The records as a part (none: no part), converted 1,000 at a time (Arrow holds a
        row in a fraction of what its dict does)."""
        chunks, stream = [], iter(records)
        while chunk := list(itertools.islice(stream, PART_ROW_GROUP)):
            chunks.append(table_of_records(chunk, self.part_schema))
        if chunks:
            self._write_sorted(final, pa.concat_tables(chunks))

    def _write_sorted(self, final: Path, table: pa.Table) -> None:
        """`table` as a part (no rows: no part), sorted by input position (stable: a row's
        later outcome stays later), in small row groups: answers that came in any order (a
        batch's) still make parts whose row groups each cover a narrow range, so the merge
        reads only those its window meets, not every part whole for every window."""
        if not table.num_rows:
            return
        import pyarrow.compute as pc  # here: a resume with nothing to fold never needs it

        table = table.take(pc.sort_indices(table, sort_keys=[(ROW_INDEX, "ascending")]))
        write_part(final, lambda path: write_parquet(table, path, PART_ROW_GROUP))

    def consolidate(self) -> None:
        """Fold many part files (one or more a run) into one, dropping superseded outcomes,
        so disk use and resume time follow the data, not the number of runs.

        The merged part is written first under the next number; a crash before the old
        parts are removed leaves duplicates that the newest part overrides.
        """
        parts = self.part_files()
        if len(parts) <= MAX_PARTS:
            return
        merged = self.parts_dir / part_name(self.next_part_number())
        write_part(merged, lambda path: merge_in_order(parts, path, self.part_schema))
        for part in parts:
            part.unlink()
        durable.sync_directory(self.parts_dir)

    def finalize(self) -> Path:
        """Merge every part into results.parquet, in input order, one row per input row
        (an input with no rows, or none done yet, gives an empty file with every column).
        A sealed journal a refused fold left behind is folded first: no row goes missing."""
        self.fold_pending()
        self.consolidate()
        parts = self.part_files()
        durable.write_with(self.results_path, lambda path: merge_in_order(parts, path, self.schema))
        return self.results_path


def give_back_freed_memory() -> None:
    """What a fold freed, handed back to the system (glibc's `malloc_trim`; nothing where
    the C library has none). A fold frees about 20 MB a 20,000 rows (Arrow's JSON reading,
    the sort) in the malloc arena of the thread it ran on, which the merge after it, on
    the event loop's thread, cannot reuse: handed back, a 20,000-row run peaks 13 MB lower
    (228 -> 215 MB, back to back). It takes about 2 ms a fold."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes  # here: a run that folds nothing never needs it

    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # the process's libc
    except (OSError, AttributeError, TypeError):  # no such function (musl, macOS), Windows
        return None
    return trim


Transform = Callable[[pa.Table], pa.Table]


def merge_in_order(
    parts: list[Path], target: Path, schema: pa.Schema, transform: Transform | None = None
) -> None:
    """Write the latest outcome of every row in `parts` to `target`, in input order.

    One window of input positions at a time, so memory holds a window, not the output:
    each window reads only the row groups of parts that meet it (parts.PartWindows), keeps
    the outcome from the newest part, sorts, and becomes one row group. (pyarrow, not
    polars, here: a polars query per window held several times the window's size.)
    `transform` rewrites each
    part's rows on the way (--reparse: new label columns).
    """
    readers = [PartWindows(p) for p in parts]
    try:
        ranges = [reader.row_range() for reader in readers]
        end = max((high for _, high in ranges), default=-1) + 1
        # parts from other writers (or versions) may differ in string flavour: one schema
        read_as = schema if ROW_INDEX in schema.names else part_schema(schema)
        with pq.ParquetWriter(target, schema, write_page_checksum=True) as writer:
            for start in range(0, end, MERGE_WINDOW):
                window = [r.read(start, start + MERGE_WINDOW) for r in readers]
                tables = [
                    _with_columns_of((transform or _same)(t), read_as)
                    for t in window
                    if t is not None
                ]
                if tables:
                    merged = _latest_in_order(pa.concat_tables(tables))
                    writer.write_table(merged.select(schema.names).cast(schema))
    finally:
        for reader in readers:
            reader.close()


def _same(table: pa.Table) -> pa.Table:
    return table


def _with_columns_of(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` as `schema`: a column added since its part was written (batch_id) is null."""
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names).cast(schema)


def _latest_in_order(table: pa.Table) -> pa.Table:
    """Rows sorted by input position; of several outcomes of a row, the last one (the
    sort is stable: a row's outcomes keep their order)."""
    import pyarrow.compute as pc  # here: 50 ms of every run's start otherwise

    rows = table.column(ROW_INDEX).combine_chunks()
    in_order = len(rows) < 2 or pc.all(pc.greater(rows[1:], rows[:-1])).as_py()
    if rows.null_count == 0 and in_order:  # each row once, in order (one run's part, say):
        return table  # nothing to sort or filter, and no copy made
    table = table.take(pc.sort_indices(table, sort_keys=[(ROW_INDEX, "ascending")]))
    rows = table.column(ROW_INDEX).combine_chunks()
    following = pa.concat_arrays([rows.slice(1), pa.nulls(min(len(rows), 1), pa.int64())])
    # a row's last outcome is followed by another row, or by nothing (null: the end)
    return table.filter(pc.or_kleene(pc.not_equal(rows, following), pc.is_null(following)))
