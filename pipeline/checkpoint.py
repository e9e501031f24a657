"""What earlier runs of a job finished, and the record of each run.

Finished rows live in the output directory's Parquet part files (see sink.py); a row
whose latest outcome is final is skipped by the next run, so nothing is paid twice.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from pipeline.progress import RunSummary
from pipeline.sink import PARTS_DIR
from pipeline.source import ROW_INDEX

RUN_RECORD = "run.json"


def finished_rows(output_dir: Path, *, retry_errors: bool = False) -> set[int]:
    """Input positions whose latest outcome is final (with --retry-errors: only `ok`)."""
    parts = sorted((output_dir / PARTS_DIR).glob("part-*.parquet"))
    if not parts:
        return set()
    latest = pl.concat([pl.scan_parquet(p).select(ROW_INDEX, "status") for p in parts]).unique(
        subset=[ROW_INDEX], keep="last", maintain_order=True
    )
    if retry_errors:
        latest = latest.filter(pl.col("status") == "ok")
    return set(latest.select(ROW_INDEX).collect().to_series().to_list())


def spent_usd(output_dir: Path) -> float:
    """What the rows finished so far cost (their latest outcomes), for the budget."""
    parts = sorted((output_dir / PARTS_DIR).glob("part-*.parquet"))
    if not parts:
        return 0.0
    latest = pl.concat([pl.scan_parquet(p).select(ROW_INDEX, "cost_usd") for p in parts])
    total = latest.unique(subset=[ROW_INDEX], keep="last").select(pl.col("cost_usd").sum())
    return float(total.collect().item() or 0.0)


def write_run_record(
    output_dir: Path,
    summary: RunSummary,
    stopped: BaseException | None,
) -> None:
    """run.json: the last run's summary, written atomically (status reads it)."""
    record = summary.to_dict()
    record["stopped"] = str(stopped) if stopped else None
    record["ended_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    record["started_at"] = (datetime.now(UTC) - timedelta(seconds=summary.wall_s)).isoformat(
        timespec="seconds"
    )
    temporary = output_dir / f".{RUN_RECORD}.tmp"
    temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, output_dir / RUN_RECORD)
