"""`pipeline status OUTPUT_DIR`: how far a job got, read from disk, no API call."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from pipeline.checkpoint import MANIFEST, RUN_RECORD
from pipeline.errors import UsageError
from pipeline.journal import LIVE, SEALED_GLOB, read_records, sealed_number
from pipeline.sink import PARTS_DIR
from pipeline.source import ROW_INDEX


def status(output_dir: Path) -> str:
    record_path = output_dir / RUN_RECORD
    if not (output_dir / MANIFEST).exists():
        raise UsageError(f"{output_dir}: no job has run here ({MANIFEST} not found)")
    # a first run that crashed wrote no run.json: its journal still counts
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.exists() else {}
    latest = finished(output_dir)
    ok = int((latest["status"] == "ok").sum())
    errors = latest.height - ok
    tokens_in = int(latest["input_tokens"].fill_null(0).sum())
    tokens_out = int(latest["output_tokens"].fill_null(0).sum())
    cost = float(latest["cost_usd"].fill_null(0).sum())
    total = record.get("rows_total")
    remaining = f"{total - ok - errors:,}" if total is not None else "?"
    lines = [
        f"job:       {record.get('job', output_dir.name)}",
        f"rows:      {f'{total:,}' if total is not None else '?'} total, {ok:,} ok, "
        f"{errors:,} error, {remaining} remaining",
        f"tokens:    {tokens_in:,} in, {tokens_out:,} out",
        f"cost:      ${cost:,.4f}",
        f"last run:  {record.get('started_at', '?')} .. {record.get('ended_at', '?')}"
        + (f" (stopped: {record['stopped']})" if record.get("stopped") else ""),
        "complete:  " + ("yes" if remaining == "0" else "no: run the job again to resume"),
    ]
    return "\n".join(lines) + "\n"


def finished(output_dir: Path) -> pl.DataFrame:
    """The latest outcome of every finished row: part files, then journals not yet folded
    (read only: status never changes the output directory)."""
    columns = [ROW_INDEX, "status", "input_tokens", "output_tokens", "cost_usd"]
    frames = [
        pl.read_parquet(p, columns=columns)
        for p in sorted((output_dir / PARTS_DIR).glob("part-*.parquet"))
    ]
    journals = [*sorted(output_dir.glob(SEALED_GLOB), key=sealed_number), output_dir / LIVE]
    for journal in journals:
        if journal.exists():
            rows = [{c: r.get(c) for c in columns} for r in read_records(journal)]
            frames.append(pl.DataFrame(rows, schema=SCHEMA))
    if not frames:
        return pl.DataFrame(schema=SCHEMA)
    frames = [f.cast(SCHEMA) for f in frames]  # type: ignore[arg-type]
    return pl.concat(frames).unique(subset=[ROW_INDEX], keep="last", maintain_order=True)


SCHEMA = {
    ROW_INDEX: pl.Int64,
    "status": pl.String,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "cost_usd": pl.Float64,
}
