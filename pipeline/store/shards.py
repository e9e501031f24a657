"""A --ray run's shards (OUTPUT/ray/shard-NNNN), taken into the output's own parts.

Each Ray worker checkpoints its shard as an output directory of its own: job.json,
journals, parts/, run.json. Until those rows are in OUTPUT/parts, every command that
reads the output must still see them, so: a command that writes the output (`run` with
or without --ray, --retry-errors, --reparse, `estimate --pilot`) takes them in first,
under the output's lock (`merge_shards`); `status` and `estimate` read them where they
are (read only: a live run's workers are still writing); `report` refuses while they
hold rows (`refuse_unmerged`).

Taking a shard in is safe to kill at any instant: its journals are folded into parts
first (the sink's own fold), each part is checked whole (CRCs) before it moves, a part
labelled by another [extract] is relabelled in place (a temporary file, then a rename
over it), and each part then moves by one rename: every answer is in exactly one place
at every instant. Only then are the shard's derived files (results.parquet, job.json,
the lock) removed: never a part or a journal that holds rows.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.errors import UsageError
from pipeline.store import checkpoint, durable, parts, unrecorded
from pipeline.store.layout import (
    INTACT_RECORD,
    LOCK,
    MANIFEST,
    PARTS_DIR,
    RESULTS_FILE,
    RUN_RECORD,
    SEALED_GLOB,
    UNRECORDED_FILE,
    part_files,
    part_name,
    shard_dirs,
)
from pipeline.store.layout import JOURNAL as LIVE
from pipeline.store.lock import lock_output
from pipeline.store.run_record import unknown_cost_usd
from pipeline.store.sink import ResultSink, Transform, merge_in_order

Salvage = Callable[[ResultSink], int]  # rows a damaged part's results.parquet gives back

# Every caller of merge_shards holds the output's lock, so a shard's lock still held is a
# worker's whose driver is gone, on its way out: Ray stops it, and its process's last
# thread lets the lock go up to 0.6 s after its main thread has exited (measured, loaded
# machine). A command run again at once waits for that, not refuses.
LOCK_WAIT_S = 15.0


def holds_rows(shard: Path) -> bool:
    """A part, or a journal with something in it: rows not yet in the output's parts."""
    journals = [*shard.glob(SEALED_GLOB), shard / LIVE]
    return bool(part_files(shard)) or any(_size(j) for j in journals)


def _size(path: Path) -> int:
    """0 for a file gone since it was listed (a live worker folded it meanwhile)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def unmerged(output_dir: Path) -> list[Path]:
    """The shards of `output_dir` whose rows are not yet in its parts."""
    return [shard for shard in shard_dirs(output_dir) if holds_rows(shard)]


def refuse_unmerged(output_dir: Path) -> None:
    """One line when a --ray run's shards hold rows that results.parquet does not."""
    waiting = unmerged(output_dir)
    if waiting:
        raise UsageError(
            f"{output_dir}: {len(waiting)} Ray shard(s) under {waiting[0].parent} hold rows "
            f"not yet in {RESULTS_FILE} (a --ray run stopped, or still running): resume the "
            "job (`pipeline run JOB.toml --ray`, or without --ray) to take them in first"
        )


def merge_shards(
    sink: ResultSink,
    relabel: Transform,
    *,
    set_aside_damaged: bool = False,
    salvage: Salvage | None = None,
    wait_s: float = LOCK_WAIT_S,
) -> None:
    """Every shard's finished rows into the sink's parts (the caller holds the output's
    lock). `relabel` gives a part labelled by another [extract] the output's labels;
    `wait_s`: how long a shard's lock may still be held (a worker just killed, exiting)."""
    stored = (sink.part_schema.metadata or {}).get(parts.MANIFEST_KEY)
    manifest = json.loads(stored) if stored else checkpoint.recorded_manifest(sink.out_dir)
    if manifest is None:
        return
    for shard in shard_dirs(sink.out_dir):
        lock = _lock_shard(shard, wait_s)
        try:
            _merge_one(shard, sink, manifest, relabel, set_aside_damaged, salvage)
        finally:
            lock.close()


def _lock_shard(shard: Path, wait_s: float) -> Any:
    """The shard's lock, waited for up to `wait_s` (a killed worker's process may take a
    moment to exit and let it go); a live worker's is refused in one line."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return lock_output(shard)
        except UsageError:
            if time.monotonic() >= deadline:
                raise UsageError(
                    f"{shard} is in use by a Ray worker of a run still going: wait for it, "
                    "or stop it, then run again"
                ) from None
        time.sleep(0.1)  # a lock file gives no wake-up to wait on


def _merge_one(
    shard: Path,
    sink: ResultSink,
    manifest: Mapping[str, Any],
    relabel: Transform,
    set_aside_damaged: bool,
    salvage: Salvage | None,
) -> None:
    content = checkpoint.recorded_manifest(shard)
    if content is None:  # nothing was ever finished here
        _remove_derived(shard)
        return
    _same_job(shard, content, manifest)
    # a killed worker's journals become parts: labelled by the shard's own [extract]
    shard_sink = ResultSink(shard, sink.schema, manifest=json.dumps(content).encode())
    shard_sink.journal.close()
    _check_or_set_aside_parts(shard_sink, sink.out_dir, set_aside_damaged, salvage)
    relabelled = sink.part_schema.with_metadata({parts.MANIFEST_KEY: json.dumps(manifest)})
    for part in part_files(shard):
        labelling = checkpoint.part_labelling(part) or content.get("extract")
        if labelling != manifest.get("extract"):  # never merged under another's labels
            write = functools.partial(_relabel, part, schema=relabelled, relabel=relabel)
            durable.write_with(part, write)  # in place: a rename over it, whole or as it was
        moved = sink.parts_dir / part_name(sink.next_part_number())
        os.replace(part, moved)
        durable.sync_directory(sink.parts_dir)
        durable.sync_directory(part.parent)
        parts.remember_part(moved)  # checked above, or relabelled just now
    unknown = unknown_cost_usd(shard)
    if unknown:  # its answers without usage still count against the budget
        add_unknown_cost(sink.out_dir, unknown)
    dead = unrecorded.left_by_dead_run(shard)
    if dead is not None:  # a killed worker's requests in flight and unseen: counted on
        add_unknown_cost(sink.out_dir, dead.worst_usd, maybe_billed=dead)
    _remove_derived(shard)


def _relabel(part: Path, path: Path, *, schema: pa.Schema, relabel: Transform) -> None:
    merge_in_order([part], path, schema, transform=relabel)


def _same_job(shard: Path, content: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
    """A shard of another job (the output was started over beside it) is never mixed in."""
    change = checkpoint.job_change(content, manifest["settings"], {}, reparse=True)
    if change is not None:
        raise UsageError(
            f"{shard} holds answers of a different job ({change.name} differs from "
            f"{MANIFEST}'s): move it out of the output directory (it is paid "
            "work: keep it), then run again"
        )


def _check_or_set_aside_parts(
    shard_sink: ResultSink, out_dir: Path, set_aside_damaged: bool, salvage: Salvage | None
) -> None:
    """A shard's parts are checked as the output's own are before any moves (a damaged
    one set aside goes to OUTPUT/damaged, its rows taken back from the shard's own
    results.parquet)."""
    parts.check_or_set_aside(
        shard_sink.part_files(), out_dir, set_aside_damaged=set_aside_damaged,
        salvage=lambda: salvage(shard_sink) if salvage is not None else 0,
        results=shard_sink.results_path,
    )  # fmt: skip


def _remove_derived(shard: Path) -> None:
    """What is left of a shard once its rows are in the output: derived files only (a
    next --ray run starts its shards afresh, with this run's job.json)."""
    if holds_rows(shard):  # never: every row moved; kept if so rather than lost
        return
    names = (
        RESULTS_FILE, RUN_RECORD, LIVE, MANIFEST, LOCK,
        UNRECORDED_FILE,
    )  # fmt: skip
    for name in names:
        (shard / name).unlink(missing_ok=True)
    record = shard / INTACT_RECORD
    for path in (record, durable.temporary_name(record)):  # the second, left by a kill
        path.unlink(missing_ok=True)
    for directory in (shard / PARTS_DIR, shard):
        with contextlib.suppress(OSError):  # not empty: what is not ours stays where it was
            directory.rmdir()


def add_unknown_cost(
    output_dir: Path, usd: float, *, maybe_billed: unrecorded.MaybeBilled | None = None
) -> None:
    """Count `usd` more of answers without usage (at their worst case) in run.json: a
    merged shard's, whose own run.json is removed next (a crash in between counts them
    twice, never not at all: the budget errs on the safe side). `maybe_billed`: a dead
    worker's requests unseen or in flight, added to what status and report say."""
    path = output_dir / RUN_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict):
        record = {}
    record["unknown_cost_worst_usd"] = unknown_cost_usd(output_dir) + usd
    if maybe_billed is not None:
        earlier = unrecorded.MaybeBilled.from_dict(record.get("maybe_billed"))
        record["maybe_billed"] = (earlier + maybe_billed).to_dict()
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    durable.write_bytes(path, text.encode("utf-8"))
