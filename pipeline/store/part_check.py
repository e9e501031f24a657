"""The damage check of part files, and the same check started ahead, beside the imports.

Every part is read whole with its page CRCs verified before a resume sends anything
(parts.check_or_set_aside), unless its bytes are known intact already: `INTACT_RECORD` in
the output directory holds the sha256 of each part that was written here or read whole and
found intact, and a part whose sha256 is there is the very file that was, byte for byte.
Hashing a million finished rows' parts takes 16 ms, on a core of its own (hashlib lets the
GIL go); reading them whole takes 0.7 s. The record is a cache, never a reason to trust
less: a part missing from it, a record lost, torn or of another machine, are each read
whole as before (and remembered once intact); it is local, never put to a URL.

`check_ahead`, called as soon as a run knows its output directory, starts checking the
parts there on the ahead thread (pipeline.ahead), and `damaged_parts` takes those answers
when it gets to the parts instead of checking them again: the same check, on the other
core, while the command's imports (polars, aiohttp, the pipeline: they hold the GIL) go on.
What a resume needs of an intact part (`RESUME_COLUMNS`) is kept from that read, made a
polars frame on the same thread, for `checkpoint.resume_state` to take (`checked_columns`)
instead of reading the part again.

An answer is taken only for the very file it was about (pipeline.ahead's keys): a part
written or replaced since (journals folded, a shard taken in, another run's) is checked
again then. A part not yet started is checked where needed.

Only pyarrow (and no pipeline module that imports more) is imported with this module: the
command line reaches it before anything else (polars, when a kept part is converted, on the
checking thread).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import ahead
from pipeline.ahead import Identity, file_identity
from pipeline.errors import first_line
from pipeline.schema import ROW_INDEX
from pipeline.store.durable import temporary_name
from pipeline.store.layout import INTACT_RECORD, PART_GLOB

if TYPE_CHECKING:
    import polars as pl

# what Arrow raises on a value or a file it cannot take (parts.py converts records too)
CONVERSION_ERRORS = (pa.ArrowException, OverflowError, TypeError, ValueError)
RESUME_COLUMNS = (ROW_INDEX, "status", "cost_usd")  # what checkpoint.resume_state reads


@dataclass(frozen=True)
class Answer:
    """What the check found of one part."""

    damage: str | None  # why it cannot be trusted; None: intact
    # of an intact part, its RESUME_COLUMNS (those it has): an Arrow table, a polars
    # frame once checked for a resume (`_checked_for_resume`)
    kept: Any = None
    digest: str | None = None  # of an intact part, its sha256


_kept: dict[Identity, pl.DataFrame] = {}  # RESUME_COLUMNS of intact parts checked ahead
_kept_lock = threading.Lock()
_record_lock = threading.Lock()  # one read-modify-write of an INTACT_RECORD at a time


def damage(part: Path) -> str | None:
    """Why `part` (or results.parquet) cannot be trusted, read whole: unreadable, a CRC
    mismatch, rows missing; or None."""
    return _read_whole(part, "", threads=True).damage


def _checked(part: Path, known: frozenset[str]) -> Answer:
    """`damage`, without the read when the part's sha256 is in `known` (only its
    RESUME_COLUMNS are read then); of an intact part its RESUME_COLUMNS and sha256. A part
    replaced while it was checked is read whole again, and its sha256 not kept: what was
    read would not be what was hashed."""
    before = file_identity(part)
    try:
        digest = _sha256(part)
    except OSError as e:
        return Answer(first_line(e))
    answer = _resume_columns(part, digest) if digest in known else _read_whole(part, digest)
    if file_identity(part) != before:
        return replace(_read_whole(part, ""), digest=None)
    return answer


def _resume_columns(part: Path, digest: str) -> Answer:
    """A part known intact by its sha256: only RESUME_COLUMNS read (those it has)."""
    try:
        with pq.ParquetFile(part) as file:
            columns = [c for c in RESUME_COLUMNS if c in file.schema_arrow.names]
            kept = file.read(columns, use_threads=False) if len(columns) == 3 else None
    except (OSError, *CONVERSION_ERRORS) as e:  # the same bytes read whole before: never
        return Answer(first_line(e))
    return Answer(None, kept, digest)


def _read_whole(part: Path, digest: str, *, threads: bool = False) -> Answer:
    """The part read whole, every page's CRC verified. Byte-array columns are read as
    dictionaries: every page is still read and its CRC checked, but no string is built
    for a row (a fifth less work than reading them plainly). `threads`: Arrow's own, for
    one part alone (not beside the imports, nor two parts at a time)."""
    try:
        metadata = pq.read_metadata(part)
        with pq.ParquetFile(  # the footer parsed once: 5 ms a 100-row-group part
            part, metadata=metadata, page_checksum_verification=True,
            read_dictionary=_byte_arrays(metadata),
        ) as file:  # fmt: skip
            table = file.read(use_threads=threads)
    except (OSError, *CONVERSION_ERRORS) as e:
        return Answer(first_line(e))
    if table.num_rows != metadata.num_rows:
        return Answer(f"holds {table.num_rows} rows where its footer says {metadata.num_rows}")
    if not set(RESUME_COLUMNS) <= set(table.column_names):
        return Answer(None, None, digest)
    return Answer(None, table.select(list(RESUME_COLUMNS)), digest)


def _byte_arrays(metadata: pq.FileMetaData) -> list[str]:
    """The top-level columns of strings or bytes: those Arrow can read as dictionaries;
    not RESUME_COLUMNS, kept as they are read (decoding a dictionary in Arrow imports
    pyarrow.compute, 50 ms on this thread while the command's imports need the GIL)."""
    schema = metadata.schema.to_arrow_schema()
    plain = (pa.string(), pa.large_string(), pa.binary(), pa.large_binary())
    return [f.name for f in schema if f.type in plain and f.name not in RESUME_COLUMNS]


def known_intact(parts_dir: Path) -> frozenset[str]:
    """The sha256 of parts found intact in `parts_dir` (INTACT_RECORD); none when it is
    missing or unreadable: each part is then read whole."""
    try:
        record = json.loads((parts_dir.parent / INTACT_RECORD).read_bytes())
        return frozenset(d for d in record["sha256"] if isinstance(d, str))
    except (OSError, ValueError, TypeError, KeyError):
        return frozenset()


def remember_intact(parts_dir: Path, digests: Iterable[str], *, only: bool = False) -> None:
    """Add `digests` to `parts_dir`'s INTACT_RECORD (`only`: they replace it). Replaced
    whole (a rename), never synced, and not at all where it cannot be written: a record
    lost or torn only costs a part one read whole."""
    with _record_lock:
        old = known_intact(parts_dir)
        new = frozenset(digests) if only else old | frozenset(digests)
        if new == old:
            return
        record = parts_dir.parent / INTACT_RECORD
        temporary = temporary_name(record)
        try:
            temporary.write_text(json.dumps({"sha256": sorted(new)}))
            os.replace(temporary, record)
        except OSError:
            with contextlib.suppress(OSError):  # a read-only disk refuses even this
                temporary.unlink(missing_ok=True)


def remember_part(part: Path) -> None:
    """A part whose bytes are good: just written whole here (those the writer made, CRCs
    and all), or moved here once its check found it intact."""
    try:
        digest = _sha256(part)
    except OSError:
        return  # read whole at the next check
    remember_intact(part.parent, [digest])


def _sha256(part: Path) -> str:
    """The file's sha256, streamed (hashlib lets the GIL go)."""
    with open(part, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def check_ahead(parts_dir: Path) -> None:
    """Start checking every part now in `parts_dir`, one after another on the ahead
    thread (the other core is the command's): `damaged_parts` takes the answers."""
    known = known_intact(parts_dir)
    for part in sorted(parts_dir.glob(PART_GLOB)):
        identity = file_identity(part)
        if identity is not None:
            ahead.start(_key(identity), functools.partial(_checked_for_resume, part, known))


def _key(identity: Identity) -> tuple[str, Identity]:
    return ("part check", identity)


def damaged_parts(parts: Sequence[Path], *, remember: bool = True) -> list[tuple[Path, str]]:
    """Each part checked, two at a time (Arrow decodes and hashlib hashes without the
    GIL); an answer `check_ahead` has, or is working on, for the same file is taken
    instead. What was found intact is remembered (INTACT_RECORD) for the next check,
    unless not to `remember` (a command that writes nothing: `status`)."""
    directories = {part.parent for part in parts}
    known = frozenset().union(*(known_intact(d) for d in directories))
    with ThreadPoolExecutor(max_workers=2) as pool:
        found = [_answer(part, pool, known) for part in parts]
        answers = [(identity, future.result()) for identity, future in found]
    with _kept_lock:
        for identity, answer in answers:
            if identity is not None and answer.kept is not None:
                _kept[identity] = answer.kept
    for directory in directories if remember else ():
        intact = [a.digest for p, (_, a) in zip(parts, answers, strict=True)
                  if p.parent == directory and a.digest is not None]  # fmt: skip
        every = {p for p in parts if p.parent == directory} >= set(directory.glob(PART_GLOB))
        remember_intact(directory, intact, only=every)  # every part here: the rest are gone
    return [
        (part, answer.damage)
        for part, (_, answer) in zip(parts, answers, strict=True)
        if answer.damage is not None
    ]


def _answer(
    part: Path, pool: ThreadPoolExecutor, known: frozenset[str]
) -> tuple[Identity | None, Future[Answer]]:
    """check_ahead's answer for this very file, with its identity (what it kept is taken by
    `checked_columns`); checked here instead, beside it, when not started yet. A part it
    was not asked about: checked now, and nothing kept of it (no resume asked for it)."""
    identity = file_identity(part)
    if identity is None or not ahead.started(_key(identity)):
        return None, pool.submit(_checked, part, known)
    started = ahead.take(_key(identity))
    if started is None:  # not begun: checked here, beside the rest
        return identity, pool.submit(_checked_for_resume, part, known)
    return identity, started


def _checked_for_resume(part: Path, known: frozenset[str]) -> Answer:
    """`_checked`, what it kept made a polars frame here, on the checking thread (polars
    converts without the GIL): not on the resume's way to its first request (15 ms for a
    million rows' statuses)."""
    answer = _checked(part, known)
    if answer.kept is None:
        return answer
    import polars  # here: this module is reached before the command's imports

    return replace(answer, kept=polars.from_arrow(answer.kept))


def checked_columns(part: Path) -> pl.DataFrame | None:
    """RESUME_COLUMNS of `part` as its check read them, if this very file was found intact
    by `damaged_parts` (taken once: the memory is the caller's then); else None."""
    identity = file_identity(part)
    with _kept_lock:
        return _kept.pop(identity, None) if identity is not None else None
