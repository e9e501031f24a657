"""What a resume needs of one part, in a few numbers: its rows as runs of input positions,
its error rows likewise, and the sum of its costs (`Summary`). The record of parts known
intact (part_check.INTACT_RECORD) keeps each part's summary beside its sha256, so a resume
whose parts are known intact reads none of their columns: for a million finished rows,
eleven summaries instead of three columns of a million rows, and no frame of them built.

A summary is a function of the part's bytes, made from its RESUME_COLUMNS as read back
(`summarize`): remembered only with the sha256 of the very file it was read from, and
sealed with it (a record with a byte changed must not decide which rows are done: a
summary whose seal does not match is not taken, and the part's columns are read). A part
whose positions are not strictly increasing (a row twice, a null position), or which
breaks into more than MAX_RUNS runs, has none: its rows' latest outcomes are read from its
columns, as before; and so are those of parts whose spans overlap (`overlapping`, which
clusters them for the resume, checkpoint.resume_state, and for the check, part_check).

Only pyarrow is imported with this module (polars in `summarize`, where it runs).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.schema import ROW_INDEX

if TYPE_CHECKING:
    import polars as pl

MAX_RUNS = 1_000  # runs of rows (or of errors) a summary holds at most: a part is read else
Runs = tuple[tuple[int, int], ...]  # [start, stop) runs of input positions, ascending


@dataclass(frozen=True)
class Summary:
    rows: Runs  # every input position in the part
    errors: Runs  # those whose status is "error"
    cost_usd: float  # the sum of its cost_usd (nulls left out)

    def span(self) -> tuple[int, int] | None:
        """The first and last position of its rows; None: it holds none."""
        return (self.rows[0][0], self.rows[-1][1] - 1) if self.rows else None

    def done_rows(self) -> pl.Series:
        return _positions(self.rows)

    def error_rows(self) -> pl.Series:
        return _positions(self.errors)

    def to_json(self, digest: str) -> dict[str, Any]:
        """As the record holds it, for the part whose sha256 is `digest`: sealed by a
        sha256 of both (`_seal`), so a flipped byte or a summary moved to another part's
        entry is refused, not believed."""
        return {
            "rows": [list(r) for r in self.rows],
            "errors": [list(r) for r in self.errors],
            "cost_usd": self.cost_usd,
            "seal": _seal(digest, self),
        }

    @classmethod
    def from_json(cls, value: Any, digest: str) -> Summary | None:
        """The summary the record holds for the part whose sha256 is `digest`; None for
        anything else (a record of another version, torn, a byte of it changed): that
        part's columns are read instead, and its summary made again."""
        try:
            rows, errors = _runs(value["rows"]), _runs(value["errors"])
            cost, seal = value["cost_usd"], value["seal"]
        except (TypeError, KeyError):
            return None
        if rows is None or errors is None or type(cost) is not float or not math.isfinite(cost):
            return None
        summary = cls(rows, errors, cost)
        return summary if seal == _seal(digest, summary) else None


def _seal(digest: str, summary: Summary) -> str:
    """A sha256 of the part's sha256 and its summary, written one way only."""
    text = json.dumps([digest, summary.rows, summary.errors, summary.cost_usd])
    return hashlib.sha256(text.encode()).hexdigest()


def overlapping(spans: Sequence[tuple[int, int] | None]) -> list[list[int]]:
    """The indexes of `spans` (each a first and last position; None: no rows, left out)
    in clusters of spans that overlap, the clusters in row order, each oldest first."""
    clusters: list[list[int]] = []
    reach: int | None = None
    for low, high, age in sorted((*span, age) for age, span in enumerate(spans) if span):
        if reach is not None and low <= reach:
            clusters[-1].append(age)
            reach = max(reach, high)
        else:
            clusters.append([age])
            reach = high
    return [sorted(c) for c in clusters]


def _runs(value: Any) -> Runs | None:
    """Runs as JSON holds them, checked: pairs of integers, each non-empty, ascending
    and apart."""
    if not isinstance(value, list) or len(value) > MAX_RUNS:
        return None
    runs: list[tuple[int, int]] = []
    for run in value:
        if not (isinstance(run, list) and len(run) == 2 and all(type(n) is int for n in run)):
            return None
        start, stop = run
        if not 0 <= start < stop or (runs and start <= runs[-1][1]):
            return None
        runs.append((start, stop))
    return tuple(runs)


def summarize(kept: Any) -> Summary | None:
    """The summary of a part's RESUME_COLUMNS (an Arrow table or a polars frame); None
    when it can have none (see the module's docstring)."""
    import polars as pl  # here: this module is reached before the command's imports

    frame = kept if isinstance(kept, pl.DataFrame) else pl.from_arrow(kept)
    assert isinstance(frame, pl.DataFrame)
    positions = frame[ROW_INDEX].cast(pl.Int64)
    if positions.null_count() or not bool((positions.diff()[1:] > 0).all()):
        return None  # a row twice, or out of order: the latest outcome is read
    rows = _runs_of(positions)
    errors = _runs_of(positions.filter(frame["status"] == "error"))
    # exactly rounded: the same sum however the column was read (in chunks or whole)
    cost = math.fsum(frame["cost_usd"].cast(pl.Float64).drop_nulls().to_list())
    if rows is None or errors is None or not math.isfinite(cost):
        return None
    return Summary(rows, errors, cost)


def _runs_of(positions: pl.Series) -> Runs | None:
    """Strictly increasing positions as runs of consecutive ones; None: too many."""
    if positions.is_empty():
        return ()
    starts_here = (positions.diff() != 1).fill_null(True)
    starts = positions.filter(starts_here)
    if len(starts) > MAX_RUNS:
        return None
    stops = positions.filter(starts_here.shift(-1, fill_value=True)) + 1
    return tuple(zip(starts.to_list(), stops.to_list(), strict=True))


def _positions(runs: Runs) -> pl.Series:
    """The positions of `runs`, ascending (and known sorted)."""
    import polars as pl

    if not runs:
        return pl.Series(ROW_INDEX, [], pl.Int64)
    ranges = [pl.int_range(start, stop, dtype=pl.Int64, eager=True) for start, stop in runs]
    return pl.concat(ranges).alias(ROW_INDEX).set_sorted()
