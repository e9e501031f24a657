"""`pipeline status OUTPUT_DIR`: how far a job got, read from disk, no API call."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from pipeline.checkpoint import RUN_RECORD
from pipeline.errors import UsageError
from pipeline.sink import PARTS_DIR
from pipeline.source import ROW_INDEX


def status(output_dir: Path) -> str:
    record_path = output_dir / RUN_RECORD
    if not record_path.exists():
        raise UsageError(f"{output_dir}: no job has run here ({RUN_RECORD} not found)")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    parts = sorted((output_dir / PARTS_DIR).glob("part-*.parquet"))
    ok = errors = 0
    tokens_in = tokens_out = 0
    cost = 0.0
    if parts:
        latest = (
            pl.concat([pl.scan_parquet(p) for p in parts])
            .unique(subset=[ROW_INDEX], keep="last")
            .collect()
        )
        ok = int((latest["status"] == "ok").sum())
        errors = latest.height - ok
        tokens_in = int(latest["input_tokens"].fill_null(0).sum())
        tokens_out = int(latest["output_tokens"].fill_null(0).sum())
        cost = float(latest["cost_usd"].fill_null(0).sum())
    total = int(record["rows_total"])
    remaining = total - ok - errors
    lines = [
        f"job:       {record['job']}",
        f"rows:      {total:,} total, {ok:,} ok, {errors:,} error, {remaining:,} remaining",
        f"tokens:    {tokens_in:,} in, {tokens_out:,} out",
        f"cost:      ${cost:,.4f}",
        f"last run:  {record.get('started_at', '?')} .. {record.get('ended_at', '?')}"
        + (f" (stopped: {record['stopped']})" if record.get("stopped") else ""),
        f"complete:  {'yes' if remaining == 0 else 'no: run the job again to resume'}",
    ]
    return "\n".join(lines) + "\n"
