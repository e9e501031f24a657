"""Input rows: CSV, Parquet or JSONL through polars, read lazily in batches.

Opening a source reads only the schema and the id column (to count rows and refuse
duplicate ids before anything is sent); the rows themselves stream in batches, so an input
larger than memory goes through.

Input cells are data, never guessed at: every CSV column is read as text exactly as
written; JSONL and Parquet keep their own types (JSON strings stay strings).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from pipeline import ahead
from pipeline.errors import InputError, first_line
from pipeline.input.locations import InputPath, ahead_key, find_files, is_single_file
from pipeline.schema import ROW_INDEX

OPENING = "open input"  # open_source's work, in pipeline.ahead's keys
DEFAULT_ID = "row_id"  # the id column's name when the job names none
FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass
class Source:
    path: InputPath  # a local file, directory or glob, or a URL (input.locations)
    id_column: str  # DEFAULT_ID when the row number is the id
    schema: pl.Schema
    total_rows: int  # in the whole input
    _frame: pl.LazyFrame
    rows_in_scope: int = -1  # with --limit: the first N rows; else total_rows

    def __post_init__(self) -> None:
        if self.rows_in_scope < 0:
            self.rows_in_scope = self.total_rows

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names())

    def plain_columns(self) -> list[str]:
        """The columns whose values can be carried to the output or printed."""
        return [name for name, dtype in self.schema.items() if plain(dtype)]

    def require_plain(self, columns: Sequence[str], what: str) -> None:
        """Refuse nested or binary columns where a value must be carried or printed."""
        for name in columns:
            dtype = self.schema[name]
            if not plain(dtype):
                raise InputError(
                    f"{what}: column {name!r} of {self.path} is {dtype}, which "
                    "cannot be carried to the output or a template; drop it or "
                    "convert it to text"
                )

    def require_columns(self, columns: Sequence[str], what: str) -> None:
        missing = [c for c in columns if c not in self.schema]
        if missing:
            raise InputError(
                f"{what} names column {missing[0]!r}, which {self.path} lacks "
                f"(its columns: {', '.join(self.columns)})"
            )

    def done_in_scope(self, done: pl.Series) -> int:
        """Of the rows an output holds, those this run's scope covers (--limit: the first N)."""
        return int((done < self.rows_in_scope).sum())

    def id_positions(self) -> pl.DataFrame:
        """Every row's position and id (to find rows of an output by their id)."""
        try:
            return self._frame.select(ROW_INDEX, self.id_column).collect()
        except pl.exceptions.PolarsError as e:
            raise InputError(f"{self.path}: cannot read rows: {first_line(e)}") from None

    def column(self, name: str) -> pl.Series:
        """One column of every row in scope, in input order."""
        try:
            return self._frame.select(name).collect().to_series()
        except pl.exceptions.PolarsError as e:
            raise InputError(f"{self.path}: cannot read rows: {first_line(e)}") from None

    def wanted(self, columns: Sequence[str]) -> list[str]:
        """What a row of `columns` carries: ROW_INDEX, the id column, then `columns`, once."""
        return list(dict.fromkeys([ROW_INDEX, self.id_column, *columns]))

    def frame_of(self, columns: Sequence[str], only: pl.Series) -> pl.DataFrame:
        """The rows `only` (positions) with ROW_INDEX, the id column and `columns`, as one
        frame: what `batches` yields, columnar."""
        frame = self._scoped(columns, only=only)
        try:
            return frame.collect()
        except pl.exceptions.PolarsError as e:
            raise InputError(f"{self.path}: cannot read rows: {first_line(e)}") from None

    def _scoped(
        self, columns: Sequence[str], skip: pl.Series | None = None, only: pl.Series | None = None
    ) -> pl.LazyFrame:
        """`in_scope` of the rows' `columns`, by the few rows left when most are done
        (kept_positions), and read from the first row wanted to the last only: a slice the
        reader skips to (a resume near the end reads the input's tail, not all of it)."""
        if skip is not None and 2 * len(skip) > self.rows_in_scope:
            only = kept_positions(skip, self.rows_in_scope, only)
            skip = None
        frame = self._frame.select(self.wanted(columns))
        first, last = (only.min(), only.max()) if only is not None else (None, None)
        if isinstance(first, int) and isinstance(last, int):  # positions are row numbers
            first = max(first, 0)
            frame = frame.slice(first, max(last - first + 1, 0))
        return in_scope(frame, skip, only)

    def batches(
        self,
        columns: Sequence[str],
        batch_size: int = 2000,
        skip: pl.Series | None = None,
        only: pl.Series | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Rows as dicts (with ROW_INDEX and the id column), `batch_size` at a time.

        `skip` holds row positions already done; they are dropped inside polars, so a
        resume with a million rows done does not walk them in Python.
        """
        frame = self._scoped(columns, skip, only)
        try:
            for batch in frame.collect_batches(chunk_size=batch_size):
                yield batch.to_dicts()
        except pl.exceptions.PolarsError as e:
            raise InputError(f"{self.path}: cannot read rows: {first_line(e)}") from None


Rows = TypeVar("Rows", pl.DataFrame, pl.LazyFrame)


def plain(dtype: pl.DataType) -> bool:
    """Not nested, binary or an object: a value a template prints and a part carries."""
    return not (dtype.is_nested() or dtype == pl.Binary or dtype == pl.Object)


def kept_positions(skip: pl.Series, rows: int, only: pl.Series | None = None) -> pl.Series:
    """The positions of `rows` rows not in `skip` (within `only`, if given), in order: a
    filter by the few rows left costs a fifth of one by a million done (a hash set of them
    built, and every row looked up in it)."""
    kept = pl.repeat(True, rows, eager=True, dtype=pl.Boolean)
    kept.scatter(skip.filter(skip.is_between(0, rows - 1)), False)
    if only is not None:
        only = only.filter(only.is_between(0, rows - 1))
        return only.filter(kept.gather(only)).cast(pl.Int64)
    return kept.arg_true().cast(pl.Int64)


def in_scope(frame: Rows, skip: pl.Series | None = None, only: pl.Series | None = None) -> Rows:
    """`frame` without the rows at positions `skip`; with `only`, only the rows there."""
    if skip is not None and len(skip):
        frame = frame.filter(~pl.col(ROW_INDEX).is_in(skip.implode()))
    if only is not None:
        frame = frame.filter(pl.col(ROW_INDEX).is_in(only.implode()))
    return frame


def open_source(path: InputPath, id_column: str | None, *, limit: int | None = None) -> Source:
    """Check the input (exists, readable, id column, unique ids) and count its rows: the
    answer `open_ahead` has for the input's file as it is now, else here."""
    started = ahead.take(ahead_key(OPENING, path, id_column, limit))
    if started is not None:
        opened: Source = started.result()  # its InputError, if it found one
        return opened
    return _open_now(path, id_column, limit)


def open_ahead(path: InputPath, id_column: str | None, *, limit: int | None = None) -> None:
    """`open_source` started on the ahead thread (pipeline.ahead), for one local file: a
    run's command line calls it before the run's imports, and the run's `open_source`
    takes the answer (the ids of a million rows read and checked: 50 ms off a resume's
    way to its first request)."""
    key = ahead_key(OPENING, path, id_column, limit)
    ahead.start(key, functools.partial(_open_now, path, id_column, limit))


def _open_now(path: InputPath, id_column: str | None, limit: int | None) -> Source:
    frame, schema = numbered_input(path)
    if id_column is not None and id_column not in schema:
        raise InputError(
            f"{path}: id column {id_column!r} not found (its columns: {', '.join(schema.names())})"
        )
    if id_column is None and DEFAULT_ID in schema:
        raise InputError(
            f"{path}: has a column {DEFAULT_ID!r}; name it as [job] id_column "
            "or rename it (row_id is the default id column)"
        )
    whole = frame
    frame = rows_frame(frame, schema, id_column, limit)
    id_column = id_column or DEFAULT_ID
    ids = _collect_ids(frame, path, id_column)
    total = ids.len() if limit is None else _count(whole, path)
    return Source(path, id_column, frame.collect_schema(), total, frame, ids.len())


def numbered_input(path: InputPath) -> tuple[pl.LazyFrame, pl.Schema]:
    """The input's rows numbered by position (ROW_INDEX), and the input's own columns.
    The columns are asked of the numbered rows, never of the bare scan: asked of the scan,
    polars no longer hands a slice of the rows to the reader (a resume, a Ray read task,
    would read the whole input for a few of its rows)."""
    frame = scan_input(path).with_row_index(ROW_INDEX)
    try:
        schema = frame.collect_schema()
    except pl.exceptions.DuplicateError:
        raise InputError(
            f"{path}: has a column {ROW_INDEX!r}, the name rows are numbered by here; rename it"
        ) from None
    except (pl.exceptions.PolarsError, OSError) as e:
        raise InputError(f"{path}: cannot read input: {first_line(e)}") from None
    return frame, pl.Schema({n: t for n, t in schema.items() if n != ROW_INDEX})


def rows_frame(
    frame: pl.LazyFrame, schema: pl.Schema, id_column: str | None, limit: int | None
) -> pl.LazyFrame:
    """The input's rows as every run reads them (of `numbered_input`'s frame and columns):
    numbered by position, plain types, the first `limit` only, the row number as the id
    when the job names no id column."""
    frame = frame.with_columns(pl.col(ROW_INDEX).cast(pl.Int64))
    # dates, times, decimals, categories and integers wider than 64 bits travel as text:
    # the journal is JSON and Parquet's integers are 64-bit, and a template would print
    # them as text anyway
    as_text = [
        n
        for n, t in schema.items()
        if t.is_temporal()
        or t.is_decimal()
        or t in (pl.Categorical, pl.Enum, pl.Int128, pl.UInt128)
    ]
    if as_text:
        frame = frame.with_columns(pl.col(as_text).cast(pl.String))
    if limit is not None:
        frame = frame.head(limit)
    if id_column is None:
        frame = frame.with_columns(pl.col(ROW_INDEX).cast(pl.Int64).alias(DEFAULT_ID))
    return frame


def scan_rows(path: InputPath, id_column: str | None) -> pl.LazyFrame:
    """`rows_frame` of an input `open_source` has checked (a Ray read task's)."""
    return rows_frame(*numbered_input(path), id_column, None)


def scan_input(path: InputPath) -> pl.LazyFrame:
    """The input's rows, unnumbered: one local file (`_scan`), or the files of a directory,
    glob or URL as one (input.locations)."""
    if is_single_file(path):
        assert isinstance(path, Path)
        return _scan(path)
    try:
        return find_files(path).scan()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise InputError(f"{path}: cannot read input: {first_line(e)}") from None


def _count(frame: pl.LazyFrame, path: InputPath) -> int:
    try:
        return int(frame.select(pl.len()).collect().item())
    except (pl.exceptions.PolarsError, OSError) as e:
        raise InputError(f"{path}: cannot read input: {first_line(e)}") from None


def _scan(path: Path) -> pl.LazyFrame:
    if not path.exists():
        where = (
            "" if path.is_absolute()
            else f"; a relative path is taken from the current directory, {Path.cwd()}"
        )  # fmt: skip
        raise InputError(f"{path}: input file not found (looked for {path.absolute()}{where})")
    if not path.is_file():
        raise InputError(f"{path}: input is not a file")
    kind = FORMATS.get(path.suffix.lower())
    if kind == "csv":
        # A CSV cell is text as written: `007` stays `007`, `1.50` stays `1.50`, `true`
        # stays `true`. Type-guessing would alter prompts, ids and kept columns.
        return pl.scan_csv(path, infer_schema=False)
    if kind == "parquet":
        return pl.scan_parquet(path)
    if kind == "jsonl":
        # every row: no type surprise mid-run; JSON strings stay strings as written
        return pl.scan_ndjson(path, infer_schema_length=None)
    raise InputError(
        f"{path}: unknown input format {path.suffix!r} (use .csv, .parquet, .jsonl or .ndjson)"
    )


def _collect_ids(frame: pl.LazyFrame, path: InputPath, id_column: str) -> pl.Series:
    try:
        ids = frame.select(pl.col(id_column)).collect().to_series()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise InputError(f"{path}: cannot read input: {first_line(e)}") from None
    if ids.null_count():
        row = ids.is_null().arg_true()[0]
        raise InputError(f"{path}: id column {id_column!r} is empty in row {row}")
    if _sorted_and_unique(ids):
        return ids
    duplicated = ids.is_duplicated()
    if duplicated.any():
        first = ids.filter(duplicated)[0]
        rows = (ids == first).arg_true().head(2).to_list()
        raise InputError(
            f"{path}: id column {id_column!r} has duplicate values, e.g. "
            f"{first!r} in rows {rows[0]} and {rows[1]}"
        )
    return ids


def _sorted_and_unique(ids: pl.Series) -> bool:
    """Text or integer ids each greater than the one before (the common case): sorted and
    unique, found in one pass, 10x faster than by hashing a million of them. False: hash
    them to know."""
    if ids.len() < 2:
        return True
    if not (ids.dtype == pl.String or ids.dtype.is_integer()):
        return False
    return bool((ids.slice(1) > ids.slice(0, ids.len() - 1)).all())
