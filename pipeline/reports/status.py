"""`pipeline status OUTPUT_DIR`: how far a job got, read from disk, no API call."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.errors import UsageError
from pipeline.run.progress import invalid_labels
from pipeline.schema import ROW_INDEX
from pipeline.store.checkpoint import latest_outcomes
from pipeline.store.journal import read_records
from pipeline.store.layout import (
    CASCADE_DIR,
    CASCADE_RECORD,
    MANIFEST,
    RESULTS_FILE,
    RUN_RECORD,
    SEALED_GLOB,
    part_files,
    sealed_number,
    shard_dirs,
)
from pipeline.store.layout import JOURNAL as LIVE
from pipeline.store.parts import damaged_parts
from pipeline.store.shards import unmerged
from pipeline.store.unrecorded import notes


def status(output_dir: Path) -> str:
    record_path = output_dir / RUN_RECORD
    if (output_dir / CASCADE_DIR / CASCADE_RECORD).exists():
        return cascade_status(output_dir)
    if not (output_dir / MANIFEST).exists():
        raise UsageError(f"{output_dir}: no job has run here ({MANIFEST} not found)")
    record = _run_record(record_path)
    shards = shard_dirs(output_dir)  # a --ray run's, live or stopped: their rows count
    parts = [p for d in [output_dir, *shards] for p in part_files(d)]
    damaged = damaged_parts(parts)
    latest = finished(output_dir, skip={d for d, _ in damaged})
    ok = int((latest["status"] == "ok").sum())
    invalid = int(((latest["status"] == "ok") & (latest["label_status"] == "invalid")).sum())
    errors = latest.height - ok
    tokens_in = int(latest["input_tokens"].fill_null(0).sum())
    tokens_out = int(latest["output_tokens"].fill_null(0).sum())
    cost = float(latest["cost_usd"].fill_null(0).sum())
    total = record.get("rows_total")
    remaining = f"{total - ok - errors:,}" if total is not None else "?"
    lines = [
        f"job:       {record.get('job', output_dir.name)}",
        f"rows:      {f'{total:,}' if total is not None else '?'} total, "
        f"{ok:,} ok{invalid_labels(invalid)}, {errors:,} error, {remaining} remaining",
        f"tokens:    {tokens_in:,} in, {tokens_out:,} out",
        f"cost:      ${cost:,.4f}",
        *(f"maybe:     {note}" for note in notes(output_dir)),  # beyond the cost above
        f"last run:  {record.get('started_at', '?')} .. {record.get('ended_at', '?')}"
        + (f" (stopped: {record['stopped']})" if record.get("stopped") else ""),
        "complete:  "
        + (
            "yes"
            if remaining == "0" and not damaged and not unmerged(output_dir)
            else "no: run the job again to resume"
        ),
    ]
    lines += shard_lines(output_dir)
    lines += [
        f"damaged:   {part} ({why}): `pipeline run --set-aside-damaged` moves it aside"
        for part, why in damaged
    ]
    lines += batch_lines(output_dir)
    return "\n".join(lines) + "\n"


def cascade_status(output_dir: Path) -> str:
    """A cascade's output: rows decided (results.parquet, as of its last run), and each
    phase's requests answered of those it holds, with their cost and batches."""
    record = _run_record(output_dir / RUN_RECORD)
    results = output_dir / RESULTS_FILE
    decided = pl.read_parquet(results, columns=["status"]) if results.exists() else None
    count = decided.height if decided is not None else 0
    errors = int((decided["status"] != "ok").sum()) if decided is not None else 0
    total = record.get("rows_total")
    remaining = f"{total - count:,}" if total is not None else "?"
    lines = [
        f"job:       {record.get('job', output_dir.name)} (a cascade)",
        f"rows:      {f'{total:,}' if total is not None else '?'} total, {count:,} decided "
        f"({errors:,} error), {remaining} remaining",
    ]
    cost, phases = 0.0, []
    for phase_dir in sorted(p for p in (output_dir / CASCADE_DIR).glob("*-*") if p.is_dir()):
        done = finished(phase_dir)
        asked = pl.scan_parquet(phase_dir.with_suffix(".parquet")).select(pl.len()).collect()
        cost += float(done["cost_usd"].fill_null(0).sum())
        phases.append(f"{phase_dir.name} {done.height:,} of {asked.item():,}")
        lines += [f"{phase_dir.name}: {line}" for line in batch_lines(phase_dir)]
    lines[2:2] = [f"requests:  {'; '.join(phases)}", f"cost:      ${cost:,.4f}"]
    stopped = f" (stopped: {record['stopped']})" if record.get("stopped") else ""
    lines.insert(
        4, f"last run:  {record.get('started_at', '?')} .. {record.get('ended_at', '?')}{stopped}"
    )
    lines.insert(
        5, "complete:  " + ("yes" if remaining == "0" else "no: run the job again to resume")
    )
    return "\n".join(lines) + "\n"


def batch_lines(output_dir: Path) -> list[str]:
    """The job's Message Batches as last seen by a run (status asks no server)."""
    from pipeline.store.book import UNCONFIRMED, BatchBook

    entries = BatchBook(output_dir).entries
    if not entries:
        return []
    lines = [
        f"batches:   {len(entries)} ({len([e for e in entries if not e.settled])} not collected)"
    ]
    for entry in entries:
        status = entry.status
        rows = len(entry.intent.rows)
        if status is None or (status.batch_id is None and status.state == UNCONFIRMED):
            lines.append(
                f"  #{entry.intent.number}  (create not confirmed: the next run looks for it)"
                f"  {rows:,} requests"
            )
            continue
        counts = ", ".join(f"{k} {v:,}" for k, v in status.counts.items() if v)
        lines.append(
            f"  #{entry.intent.number}  {status.batch_id or '-'}  {status.state}  {rows:,} requests"
            + (f" ({counts})" if counts else "")
            + f"  created {status.created_at or '?'}  expires {status.expires_at or '?'}"
            + (f"  ({status.note})" if status.note else "")
        )
    return lines


def _run_record(path: Path) -> dict[str, Any]:
    """run.json, or {} when a first run crashed before writing it (its journal still
    counts) or it is unreadable (truncated: the parts and journals still tell)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        print(f"warning: {path} is unreadable ({e}); counting from the results", file=sys.stderr)
        return {}
    return record if isinstance(record, dict) else {}


def shard_lines(output_dir: Path) -> list[str]:
    """A --ray run's shards whose rows are not yet in the output's parts (counted above)."""
    waiting = unmerged(output_dir)
    if not waiting:
        return []
    return [
        f"ray:       {len(waiting)} shard(s) under {waiting[0].parent} hold rows not yet in "
        "results.parquet (a --ray run in progress, or stopped): the next run takes them in"
    ]


def finished(output_dir: Path, skip: Collection[Path] = ()) -> pl.DataFrame:
    """The latest outcome of every finished row: the part files (but `skip`), then
    journals not yet folded, of the output and then of a --ray run's shards (newer: a
    --retry-errors run on Ray re-does rows there). Read only: status never changes the
    output directory, and a live run's workers may still be writing their shards."""
    columns = [ROW_INDEX, "status", "label_status", "input_tokens", "output_tokens", "cost_usd"]
    frames = []
    for directory in [output_dir, *shard_dirs(output_dir)]:
        parts = [p for p in part_files(directory) if p not in skip]
        journals = [*sorted(directory.glob(SEALED_GLOB), key=sealed_number), directory / LIVE]
        for path in [*parts, *journals]:
            with contextlib.suppress(FileNotFoundError):  # folded or merged since listed
                frames.append(_outcomes_in(path, columns))
    if not frames:
        return pl.DataFrame(schema=SCHEMA)
    frames = [f.cast(SCHEMA) for f in frames]  # type: ignore[arg-type]
    return latest_outcomes([f.lazy() for f in frames])


def _outcomes_in(path: Path, columns: list[str]) -> pl.DataFrame:
    """The outcome columns of one part file or journal."""
    if path.suffix == ".parquet":
        return pl.read_parquet(path, columns=columns)
    rows = [{c: r.get(c) for c in columns} for r in read_records(path)]
    return pl.DataFrame(rows, schema=SCHEMA)


SCHEMA = {
    ROW_INDEX: pl.Int64,
    "status": pl.String,
    "label_status": pl.String,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "cost_usd": pl.Float64,
}
