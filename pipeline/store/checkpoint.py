"""Resume: what earlier runs of a job finished, so a run skips every row whose latest
outcome is final and nothing is paid twice.

Finished rows live in the output directory's part files and journal (sink.py,
journal.py); a run first folds whatever a crashed run left in journals into part files.
The output's other jobs have modules of their own, their names importable from here too:
the lock (lock.py), the run record (run_record.py, run.json) and whether it is the same
job (manifest.py, job.json).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from pipeline import ahead
from pipeline.ahead import file_identity
from pipeline.schema import ROW_INDEX
from pipeline.store import part_check
from pipeline.store.layout import LOCK as LOCK
from pipeline.store.layout import MANIFEST as MANIFEST
from pipeline.store.layout import RUN_RECORD as RUN_RECORD
from pipeline.store.layout import part_files
from pipeline.store.lock import lock_output as lock_output
from pipeline.store.manifest import INPUT_CONTENT as INPUT_CONTENT
from pipeline.store.manifest import SAMPLE_BYTES as SAMPLE_BYTES
from pipeline.store.manifest import Change as Change
from pipeline.store.manifest import _legacy_identity as _legacy_identity
from pipeline.store.manifest import check_job_change as check_job_change
from pipeline.store.manifest import fingerprint as fingerprint
from pipeline.store.manifest import input_identity as input_identity
from pipeline.store.manifest import job_change as job_change
from pipeline.store.manifest import labelling as labelling
from pipeline.store.manifest import nothing_answered as nothing_answered
from pipeline.store.manifest import part_labelling as part_labelling
from pipeline.store.manifest import record_job_or_refuse as record_job_or_refuse
from pipeline.store.manifest import record_labelling as record_labelling
from pipeline.store.manifest import recorded_manifest as recorded_manifest
from pipeline.store.manifest import refusal as refusal
from pipeline.store.manifest import relabelled_manifest as relabelled_manifest
from pipeline.store.part_check import RESUME_COLUMNS, Checked, checked
from pipeline.store.part_summary import Summary, overlapping
from pipeline.store.run_record import unknown_cost_usd as unknown_cost_usd
from pipeline.store.run_record import write_run_record as write_run_record

check_same_job = record_job_or_refuse  # its old name, which tests still use


@dataclass(frozen=True)
class ResumeState:
    done_rows: pl.Series  # input positions not to send again
    spent_usd: float  # what the finished rows cost: the budget counts it
    error_rows: pl.Series = field(default_factory=lambda: pl.Series([], dtype=pl.Int64))
    # answers that came without usage, at their worst case (run.json): the budget counts it
    unknown_cost_usd: float = 0.0


def resume_state(output_dir: Path, *, retry_errors: bool = False) -> ResumeState:
    """Rows whose latest outcome is final (with --retry-errors: only `ok` ones)."""
    unknown = unknown_cost_usd(output_dir)
    parts = part_files(output_dir)
    if not parts:
        return ResumeState(pl.Series(ROW_INDEX, [], pl.Int64), 0.0, unknown_cost_usd=unknown)
    resume = replace(_latest(parts), unknown_cost_usd=unknown)
    if not retry_errors:
        return resume
    errors = resume.error_rows
    done = resume.done_rows.filter(~resume.done_rows.is_in(errors.implode()))
    return replace(resume, done_rows=done)


def latest_outcomes(frames: Sequence[pl.LazyFrame]) -> pl.DataFrame:
    """Of several outcomes of a row, in frames oldest first, the last one: a row re-done
    later (--retry-errors) replaces its earlier outcome. (sink.merge_in_order does the same
    window by window for the merge, in pyarrow.)

    Only frames whose rows' spans overlap can hold a row twice: each cluster of them is
    sorted on its own (a stable sort keeps a row's outcomes oldest first, side by side, and
    the last of each run stands), and the clusters, apart, follow each other in row order.
    A resume whose parts each hold rows of their own sorts nothing (parts come sorted);
    one with a part re-done sorts that part and the ones it overlaps, not the million."""
    if not frames:
        return pl.DataFrame()
    parts = pl.collect_all(frames)
    if any(p[ROW_INDEX].null_count() for p in parts):  # no span: all as one cluster
        return _last_of_each(pl.concat(parts))
    clusters = overlapping([_span(p[ROW_INDEX]) for p in parts])
    if not clusters:
        return pl.concat(parts)
    together = [pl.concat([parts[a] for a in c], rechunk=False) for c in clusters]
    return pl.concat([_last_of_each(c) for c in together], rechunk=False)


def _span(rows: pl.Series) -> tuple[int, int] | None:
    """The first and last position `rows` hold; None for none."""
    low, high = rows.min(), rows.max()
    return (low, high) if isinstance(low, int) and isinstance(high, int) else None


def _last_of_each(outcomes: pl.DataFrame) -> pl.DataFrame:
    """`outcomes` (oldest first) in row order, the last outcome of each row only."""
    if not outcomes[ROW_INDEX].is_sorted():  # in order already (one run's parts): as sorted
        outcomes = outcomes.sort(ROW_INDEX, maintain_order=True)
    rows = outcomes[ROW_INDEX]
    last = rows.ne_missing(rows.shift(-1))
    return outcomes if last.all() else outcomes.filter(last)  # no row twice: as it is


def resume_ahead(output_dir: Path) -> None:
    """What the parts now in `output_dir` finished, worked out on the ahead thread
    (pipeline.ahead) from the answers of their checks started before (part_check); taken
    by `resume_state` if the parts are those very files then, and each was found intact."""
    parts = part_files(output_dir)
    if parts:
        ahead.start(_latest_key(parts), functools.partial(_latest_ahead, parts))


def _latest_key(parts: list[Path]) -> Hashable | None:
    identities = [file_identity(p) for p in parts]
    return None if None in identities else ("resume", tuple(identities))


def _latest_ahead(parts: list[Path]) -> ResumeState | None:
    checks = [part_check.checked_ahead(p) for p in parts]
    return None if None in checks else _latest_of(parts, checks)


def _latest(parts: list[Path]) -> ResumeState:
    """As `resume_ahead` worked it out for these very files, else here: from the checks
    of the parts (taken now either way: their memory is freed with the resume's)."""
    checks = [checked(p) for p in parts]
    started = ahead.take(_latest_key(parts))
    done: ResumeState | None = started.result() if started is not None else None
    return done if done is not None else _latest_of(parts, checks)


def _latest_of(parts: list[Path], checks: list[Checked | None]) -> ResumeState:
    """From the parts' summaries when each has one (part_summary), read from the rows
    only of parts that overlap others; else from every part's rows."""
    summaries = [c.summary for c in checks if c is not None and c.summary is not None]
    if len(summaries) < len(parts):
        return _of_rows([_outcomes(p, c) for p, c in zip(parts, checks, strict=True)])
    states = [
        _of_summary(summaries[c[0]])
        if len(c) == 1
        else _of_rows([_outcomes(parts[a], checks[a]) for a in c])
        for c in overlapping([s.span() for s in summaries])
    ]  # apart, in row order: each cluster's rows follow the one before
    if not states:
        return ResumeState(pl.Series(ROW_INDEX, [], pl.Int64), 0.0)
    return ResumeState(
        pl.concat([s.done_rows for s in states]).set_sorted(),
        math.fsum(s.spent_usd for s in states),
        pl.concat([s.error_rows for s in states]).set_sorted(),
    )


def _of_summary(summary: Summary) -> ResumeState:
    return ResumeState(summary.done_rows(), summary.cost_usd, summary.error_rows())


def _of_rows(frames: list[pl.LazyFrame]) -> ResumeState:
    latest = latest_outcomes(frames)
    spent = float(latest["cost_usd"].sum() or 0.0)
    errors = latest[ROW_INDEX].filter(latest["status"] == "error").sort()
    return ResumeState(latest[ROW_INDEX].sort(), spent, errors)


def _outcomes(part: Path, check: Checked | None) -> pl.LazyFrame:
    """A part's input positions, statuses and costs: as its damage check read them when it
    kept them (the file unchanged since), else read now."""
    if check is None or check.kept is None:
        return pl.scan_parquet(part).select(RESUME_COLUMNS)
    return check.kept.lazy()
