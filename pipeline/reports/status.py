"""`pipeline status OUTPUT_DIR`: how far a job got, read from disk; the API is asked only
for the batches' current state, with --refresh (commands/status.py asks, `fresh` here)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Collection, Mapping
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from pipeline.errors import UsageError
from pipeline.reports.savings import exact_sum
from pipeline.run.progress import invalid_labels
from pipeline.schema import ROW_INDEX
from pipeline.store.book import UNCONFIRMED, BatchBook, uncollected
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

if TYPE_CHECKING:
    from pipeline.store.book import Status


Fresh = Mapping[str, "Status"]  # batch id -> its state as the API said it just now


def status(output_dir: Path, fresh: Fresh | None = None) -> str:
    """The text `pipeline status` prints; `fresh`: batches as the API sees them now."""
    return status_text(status_data(output_dir, fresh))


def status_text(data: dict[str, Any]) -> str:
    """`status_data`'s object as the lines a person reads."""
    return _cascade_text(data) if data["cascade"] else _text(data)


def status_data(output_dir: Path, fresh: Fresh | None = None) -> dict[str, Any]:
    """What status says, as one object (`--format json`); costs exact (Decimal)."""
    if (output_dir / CASCADE_DIR / CASCADE_RECORD).exists():
        return cascade_data(output_dir, fresh)
    if not (output_dir / MANIFEST).exists():
        raise UsageError(f"{output_dir}: no job has run here ({MANIFEST} not found)")
    record = _run_record(output_dir / RUN_RECORD)
    shards = shard_dirs(output_dir)  # a --ray run's, live or stopped: their rows count
    every = [p for d in [output_dir, *shards] for p in part_files(d)]
    damaged = damaged_parts(every, remember=False)  # read only: no lock is taken
    latest = finished(output_dir, skip={d for d, _ in damaged})
    ok = int((latest["status"] == "ok").sum())
    total = record.get("rows_total")
    remaining = total - latest.height if total is not None else None
    # rows in batches sent and not collected are bought already: not "to send"
    in_batches = len(uncollected(output_dir, set(latest[ROW_INDEX].to_list())).rows)
    waiting = unmerged(output_dir)
    return {
        "output": str(output_dir),
        "job": record.get("job", output_dir.name),
        "cascade": False,
        "rows": {
            "total": total,
            "ok": ok,
            "invalid_labels": int(
                ((latest["status"] == "ok") & (latest["label_status"] == "invalid")).sum()
            ),
            "error": latest.height - ok,
            "remaining": remaining,
            "in_batches": in_batches,
            "not_sent": max(0, remaining - in_batches) if remaining is not None else None,
        },
        "tokens": {
            "input": int(latest["input_tokens"].fill_null(0).sum()),
            "output": int(latest["output_tokens"].fill_null(0).sum()),
        },
        "cost_usd": exact_sum(latest["cost_usd"]) or Decimal(0),
        "maybe_billed": notes(output_dir),  # beyond the cost above
        "last_run": _last_run(record),
        "complete": remaining == 0 and not damaged and not waiting,
        "ray_shards_waiting": len(waiting),
        "damaged": [{"part": str(part), "why": why} for part, why in damaged],
        "batches": batch_data(output_dir, fresh),
    }


def _last_run(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in ("started_at", "ended_at", "stopped")}


def _text(data: dict[str, Any]) -> str:
    rows, tokens, total = data["rows"], data["tokens"], data["rows"]["total"]
    remaining = "?" if rows["remaining"] is None else f"{rows['remaining']:,}"
    remaining += " remaining"
    if rows["remaining"]:  # bought already (in batches) or still to pay for
        remaining += f" ({rows['in_batches']:,} in batches, {rows['not_sent']:,} not yet sent)"
    lines = [
        f"job:       {data['job']}",
        f"rows:      {'?' if total is None else f'{total:,}'} total, {rows['ok']:,} ok"
        f"{invalid_labels(rows['invalid_labels'])}, {rows['error']:,} error, {remaining}",
        f"tokens:    {tokens['input']:,} in, {tokens['output']:,} out",
        f"cost:      ${float(data['cost_usd']):,.4f}",
        *(f"maybe:     {note}" for note in data["maybe_billed"]),
        *_ending(data),
    ]
    if data["ray_shards_waiting"]:
        lines.append(shard_line(Path(data["output"]), data["ray_shards_waiting"]))
    lines += [
        f"damaged:   {d['part']} ({d['why']}): `pipeline run --set-aside-damaged` moves it aside"
        for d in data["damaged"]
    ]
    lines += batch_lines(data["batches"])
    return "\n".join(lines) + "\n"


def _ending(data: Mapping[str, Any]) -> list[str]:
    """The last run's times and whether the job is complete: every status ends so."""
    run = data["last_run"]
    stopped = f" (stopped: {run['stopped']})" if run.get("stopped") else ""
    return [
        f"last run:  {run.get('started_at') or '?'} .. {run.get('ended_at') or '?'}{stopped}",
        "complete:  " + ("yes" if data["complete"] else "no: run the job again to resume"),
    ]


def cascade_data(output_dir: Path, fresh: Fresh | None = None) -> dict[str, Any]:
    """A cascade's output: rows decided (results.parquet, as of its last run), and each
    phase's requests answered of those it holds, with their cost and batches."""
    record = _run_record(output_dir / RUN_RECORD)
    results = output_dir / RESULTS_FILE
    decided = pl.read_parquet(results, columns=["status"]) if results.exists() else None
    count = decided.height if decided is not None else 0
    total = record.get("rows_total")
    remaining = total - count if total is not None else None
    cost, phases, batches = Decimal(0), [], {}
    for phase_dir in sorted(p for p in (output_dir / CASCADE_DIR).glob("*-*") if p.is_dir()):
        done = finished(phase_dir)
        asked = pl.scan_parquet(phase_dir.with_suffix(".parquet")).select(pl.len()).collect()
        cost += exact_sum(done["cost_usd"]) or Decimal(0)
        phases.append({"phase": phase_dir.name, "answered": done.height, "asked": asked.item()})
        if found := batch_data(phase_dir, fresh):
            batches[phase_dir.name] = found
    return {
        "output": str(output_dir),
        "job": record.get("job", output_dir.name),
        "cascade": True,
        "rows": {
            "total": total,
            "decided": count,
            "error": int((decided["status"] != "ok").sum()) if decided is not None else 0,
            "remaining": remaining,
        },
        "requests": phases,
        "cost_usd": cost,
        "last_run": _last_run(record),
        "complete": remaining == 0,
        "batches": batches,
    }


def cascade_status(output_dir: Path) -> str:
    return _cascade_text(cascade_data(output_dir))


def _cascade_text(data: dict[str, Any]) -> str:
    rows, total = data["rows"], data["rows"]["total"]
    remaining = "?" if rows["remaining"] is None else f"{rows['remaining']:,}"
    phases = [f"{p['phase']} {p['answered']:,} of {p['asked']:,}" for p in data["requests"]]
    lines = [
        f"job:       {data['job']} (a cascade)",
        f"rows:      {'?' if total is None else f'{total:,}'} total, {rows['decided']:,} decided "
        f"({rows['error']:,} error), {remaining} remaining",
        f"requests:  {'; '.join(phases)}",
        f"cost:      ${float(data['cost_usd']):,.4f}",
        *_ending(data),
    ]
    for phase, found in data["batches"].items():
        lines += [f"{phase}: {line}" for line in batch_lines(found)]
    return "\n".join(lines) + "\n"


def batch_data(output_dir: Path, fresh: Fresh | None = None) -> list[dict[str, Any]]:
    """The job's Message Batches: as the API said just now (`fresh`, seen "now"), else as
    last seen by a run (status itself asks no server unless --refresh)."""
    entries = []
    for entry in BatchBook(output_dir).entries:
        number, status, seen = entry.intent.number, entry.status, "last run"
        now = fresh.get(status.batch_id or "") if fresh and status is not None else None
        if now is not None:
            status, seen = now, "now"
        confirmed = status is not None and not (
            status.batch_id is None and status.state == UNCONFIRMED
        )
        entries.append({
            "number": number,
            "batch_id": status.batch_id if status else None,
            "state": status.state if status and confirmed else "create not confirmed",
            "requests": len(entry.intent.rows),
            "counts": {k: v for k, v in status.counts.items() if v} if status else {},
            "created_at": status.created_at if status else None,
            "expires_at": status.expires_at if status else None,
            "note": status.note if status else None,
            "collected": entry.settled,
            "seen": seen if confirmed else None,
        })  # fmt: skip
    return entries


def batch_lines(batches: list[dict[str, Any]]) -> list[str]:
    if not batches:
        return []
    pending = len([b for b in batches if not b["collected"]])
    seen = "as the API says now" if any(b["seen"] == "now" for b in batches) else "as last seen"
    lines = [f"batches:   {len(batches)} ({pending} not collected; {seen})"]
    for b in batches:
        if b["seen"] is None:
            lines.append(
                f"  #{b['number']}  (create not confirmed: the next run looks for it)"
                f"  {b['requests']:,} requests"
            )
            continue
        counts = ", ".join(f"{k} {v:,}" for k, v in b["counts"].items())
        lines.append(
            f"  #{b['number']}  {b['batch_id'] or '-'}  {b['state']}  {b['requests']:,} requests"
            + (f" ({counts})" if counts else "")
            + f"  created {b['created_at'] or '?'}  expires {b['expires_at'] or '?'}"
            + (f"  ({b['note']})" if b["note"] else "")
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


def shard_line(output_dir: Path, count: int) -> str:
    """A --ray run's shards whose rows are not yet in the output's parts (counted above)."""
    return (
        f"ray:       {count} shard(s) under {unmerged(output_dir)[0].parent} hold rows not yet "
        "in results.parquet (a --ray run in progress, or stopped): the next run takes them in"
    )


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
