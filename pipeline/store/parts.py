"""Part files: Parquet written so it can be trusted later, and checked before a resume.

Every page carries a CRC (`write_page_checksum`), and a resume reads every part whole with
the CRCs verified before anything is sent: a part truncated or with flipped bytes is found
then, named, and can be set aside (`--set-aside-damaged`: moved to `damaged/`, never
deleted), instead of the run paying for every remaining row and failing at the merge.

A record whose value does not fit its column (an integer beyond 64 bits in a label, from
a journal written by an earlier version) must not make a journal unfoldable: such a value
is dropped to null and the row's label marked invalid, saying why; the paid answer stays.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UsageError, first_line
from pipeline.store import durable
from pipeline.store.layout import DAMAGED_DIR

MANIFEST_KEY = b"pipeline.job"  # part metadata: the job.json content that made the part

_CONVERSION_ERRORS = (pa.ArrowException, OverflowError, TypeError, ValueError)


def write_parquet(table: pa.Table, path: Path, row_group_size: int | None = None) -> None:
    pq.write_table(table, path, write_page_checksum=True, row_group_size=row_group_size)


def table_of_records(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """The records as a table of `schema`; values that cannot fit are conformed."""
    try:
        return pa.Table.from_pylist(list(rows), schema=schema)
    except _CONVERSION_ERRORS:
        return pa.Table.from_pylist([conform(r, schema) for r in rows], schema=schema)


def conform(record: dict[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """`record` with every value that does not fit its column set to null; when a label
    column was among them, the label is `invalid` and `label_error` says which."""
    out = dict(record)
    misfits = []
    for field in schema:
        value = out.get(field.name)
        if value is None:
            continue
        try:
            pa.array([value], field.type)
        except _CONVERSION_ERRORS:
            out[field.name] = None
            misfits.append(f"{field.name} = {str(value)[:40]} does not fit {field.type}")
    if misfits and "label_status" in schema.names:
        out["label_status"] = "invalid"
        out["label_error"] = "; ".join(misfits)
    return out


def damage(part: Path) -> str | None:
    """Why `part` cannot be trusted (unreadable, a CRC mismatch, rows missing), or None."""
    try:
        metadata = pq.read_metadata(part)
        table = pq.read_table(part, page_checksum_verification=True)
    except (OSError, *_CONVERSION_ERRORS) as e:
        return first_line(e)
    if table.num_rows != metadata.num_rows:
        return f"holds {table.num_rows} rows where its footer says {metadata.num_rows}"
    return None


def damaged_parts(parts: Sequence[Path]) -> list[tuple[Path, str]]:
    return [(part, why) for part in parts if (why := damage(part)) is not None]


def check_or_set_aside(
    parts: Sequence[Path],
    out_dir: Path,
    *,
    set_aside_damaged: bool,
    salvage: Callable[[], int],
    results: Path,
) -> None:
    """Every part must read whole before it is used: a damaged one is named in one line
    (exit 2), or with `set_aside_damaged` moved to OUT/damaged/ (kept, never deleted) and
    its rows taken back by `salvage` from `results` where that reads whole; the rest are
    sent again. The one check for an output's own parts and a Ray shard's."""
    damaged = damaged_parts(parts)
    if not damaged:
        return
    part, why = damaged[0]
    if not set_aside_damaged:
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise UsageError(
            f"{part} is damaged: {why}{more}; run again with --set-aside-damaged to move "
            f"it to {out_dir / DAMAGED_DIR} (kept, not deleted) and send only its rows again"
        )
    target = set_aside([p for p, _ in damaged], out_dir)
    recovered = salvage()
    names = ", ".join(str(p) for p, _ in damaged)
    print(
        f"warning: moved damaged {names} to {target}; {recovered:,} of its rows recovered "
        f"from {results}, the others will be sent again",
        file=sys.stderr,
    )


def set_aside(parts: Sequence[Path], out_dir: Path) -> Path:
    """Move damaged parts to OUT/damaged/ (never deleted: the bytes may still be salvaged)."""
    target = out_dir / DAMAGED_DIR
    target.mkdir(exist_ok=True)
    for part in parts:
        destination = target / part.name
        counter = 1
        while destination.exists():
            counter += 1
            destination = target / f"{part.stem}-{counter}{part.suffix}"
        os.replace(part, destination)
    durable.sync_directory(target)
    durable.sync_directory(parts[0].parent if parts else out_dir)
    return target
