"""Resume: the output's lock, what earlier runs of a job finished, and the record of each
run (run.json); whether they were the same job is manifest.py's (job.json), its names
importable from here too.

Finished rows live in the output directory's part files and journal (sink.py,
journal.py). A run first folds whatever a crashed run left in journals into part files,
then skips every row whose latest outcome is final, so nothing is paid twice. `job.json`
records what shapes the requests; a later run that differs is refused, naming the setting.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import polars as pl

from pipeline.errors import UsageError
from pipeline.schema import ROW_INDEX
from pipeline.store.layout import part_files
from pipeline.store.manifest import INPUT_CONTENT as INPUT_CONTENT
from pipeline.store.manifest import MANIFEST as MANIFEST
from pipeline.store.manifest import SAMPLE_BYTES as SAMPLE_BYTES
from pipeline.store.manifest import Change as Change
from pipeline.store.manifest import _legacy_identity as _legacy_identity
from pipeline.store.manifest import check_job_change as check_job_change
from pipeline.store.manifest import check_same_job as check_same_job
from pipeline.store.manifest import fingerprint as fingerprint
from pipeline.store.manifest import input_identity as input_identity
from pipeline.store.manifest import job_change as job_change
from pipeline.store.manifest import labelling as labelling
from pipeline.store.manifest import nothing_answered as nothing_answered
from pipeline.store.manifest import now_iso, write_json
from pipeline.store.manifest import part_labelling as part_labelling
from pipeline.store.manifest import record_labelling as record_labelling
from pipeline.store.manifest import recorded_manifest as recorded_manifest
from pipeline.store.manifest import refusal as refusal
from pipeline.store.manifest import relabelled_manifest as relabelled_manifest

RUN_RECORD = "run.json"


@dataclass(frozen=True)
class ResumeState:
    done_rows: pl.Series  # input positions not to send again
    spent_usd: float  # what the finished rows cost: the budget counts it
    error_rows: pl.Series = field(default_factory=lambda: pl.Series([], dtype=pl.Int64))
    # answers that came without usage, at their worst case (run.json): the budget counts it
    unknown_cost_usd: float = 0.0


LOCK = ".lock"


def lock_output(output_dir: Path) -> IO[bytes]:
    """An exclusive lock on the output directory for this process's lifetime: two runs on
    one directory would fold each other's journal and pay twice."""
    output_dir.mkdir(parents=True, exist_ok=True)
    handle = (output_dir / LOCK).open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UsageError(
            f"{output_dir} is in use by another run of this job (wait for it, or stop it first)"
        ) from None
    return handle


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


def unknown_cost_usd(output_dir: Path) -> float:
    """What earlier runs' answers without usage may have cost (their worst case)."""
    try:
        record = json.loads((output_dir / RUN_RECORD).read_text(encoding="utf-8"))
        return float(record.get("unknown_cost_worst_usd") or 0.0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def latest_outcomes(frames: Sequence[pl.LazyFrame]) -> pl.DataFrame:
    """Of several outcomes of a row, in frames oldest first, the last one: a row re-done
    later (--retry-errors) replaces its earlier outcome. (sink.merge_in_order does the same
    window by window for the merge, in pyarrow.)"""
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames).unique(subset=[ROW_INDEX], keep="last").collect()


def _latest(parts: list[Path]) -> ResumeState:
    scans = [pl.scan_parquet(p).select(ROW_INDEX, "status", "cost_usd") for p in parts]
    latest = latest_outcomes(scans)
    spent = float(latest["cost_usd"].sum() or 0.0)
    errors = latest.filter(pl.col("status") == "error")[ROW_INDEX].sort()
    return ResumeState(latest[ROW_INDEX].sort(), spent, errors)


def write_run_record(
    output_dir: Path,
    summary: Mapping[str, Any],
    stopped: BaseException | None,
    gold_column: str | None = None,
    label_column: str | None = None,
    unknown_cost_usd: float = 0.0,
) -> None:
    """run.json: the last run's summary (status reads it), and where report finds the
    labels and gold labels for accuracy."""
    record = dict(summary)
    record["stopped"] = str(stopped) if stopped else None
    record["gold_column"], record["label_column"] = gold_column, label_column
    record["unknown_cost_worst_usd"] = unknown_cost_usd  # earlier runs' included
    record["ended_at"] = now_iso()
    started = datetime.now(UTC) - timedelta(seconds=float(summary["wall_s"]))
    record["started_at"] = started.isoformat(timespec="seconds")
    write_json(output_dir / RUN_RECORD, record)
