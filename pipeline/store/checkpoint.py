"""Resume: what earlier runs of a job finished, so a run skips every row whose latest
outcome is final and nothing is paid twice.

Finished rows live in the output directory's part files and journal (sink.py,
journal.py); a run first folds whatever a crashed run left in journals into part files.
The output's other jobs have modules of their own, their names importable from here too:
the lock (lock.py), the run record (run_record.py, run.json) and whether it is the same
job (manifest.py, job.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from pipeline.schema import ROW_INDEX
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
from pipeline.store.part_check import RESUME_COLUMNS, checked_columns
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
    window by window for the merge, in pyarrow.)"""
    if not frames:
        return pl.DataFrame()
    # a stable sort keeps a row's outcomes oldest first, side by side: the last of each
    # run stands (3x faster than a hash unique on a million rows, and parts come sorted)
    outcomes = pl.concat(frames).collect()
    if not outcomes[ROW_INDEX].is_sorted():  # in order already (parts of one run): as sorted
        outcomes = outcomes.sort(ROW_INDEX, maintain_order=True)
    rows = outcomes[ROW_INDEX]
    return outcomes.filter(rows.ne_missing(rows.shift(-1)))


def _latest(parts: list[Path]) -> ResumeState:
    scans = [_outcomes(p) for p in parts]
    latest = latest_outcomes(scans)
    spent = float(latest["cost_usd"].sum() or 0.0)
    errors = latest.filter(pl.col("status") == "error")[ROW_INDEX].sort()
    return ResumeState(latest[ROW_INDEX].sort(), spent, errors)


def _outcomes(part: Path) -> pl.LazyFrame:
    """A part's input positions, statuses and costs: as its damage check read them when it
    kept them (the file unchanged since), else read now."""
    kept = checked_columns(part)
    if kept is None:
        return pl.scan_parquet(part).select(RESUME_COLUMNS)
    frame = pl.from_arrow(kept)
    assert isinstance(frame, pl.DataFrame)
    return frame.lazy()
