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
What a resume needs of an intact part is kept for `checkpoint.resume_state` to take
(`checked`): its summary (part_summary), which the record holds beside its sha256 (no
column is read then), or made from its `RESUME_COLUMNS` as read; and those columns too,
as a polars frame made on the same thread, where the summary cannot stand for them (the
part has none, or its span meets another part's).

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
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
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
from pipeline.store.part_summary import Summary, overlapping, summarize

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
    summary: Summary | None = None  # of an intact part, what a resume needs (part_summary)


@dataclass(frozen=True)
class Known:
    """An INTACT_RECORD as read: the sha256 of parts found intact, and their summaries."""

    digests: frozenset[str] = frozenset()
    summaries: Mapping[str, Summary] = field(default_factory=dict)

    def summary_alone(self, digest: str) -> Summary | None:
        """The part's summary, if no other part's summary here meets its span: one that
        does, a resume reads the rows of (checkpoint.resume_state), so they are read
        with the check."""
        return None if digest in self._meeting else self.summaries.get(digest)

    @functools.cached_property
    def _meeting(self) -> frozenset[str]:
        """The parts whose summary's span meets another's (as the resume clusters them)."""
        digests = list(self.summaries)
        clusters = overlapping([self.summaries[d].span() for d in digests])
        return frozenset(digests[i] for c in clusters if len(c) > 1 for i in c)


@dataclass(frozen=True)
class Checked:
    """What the check of an intact part keeps for a resume (`checked`): its summary, or
    its RESUME_COLUMNS as a polars frame where it has none to go by (or both)."""

    kept: pl.DataFrame | None
    summary: Summary | None


_kept: dict[Identity, Checked] = {}  # of intact parts checked ahead, for the resume
_kept_lock = threading.Lock()
_record_lock = threading.Lock()  # one read-modify-write of an INTACT_RECORD at a time


def damage(part: Path) -> str | None:
    """Why `part` (or results.parquet) cannot be trusted, read whole: unreadable, a CRC
    mismatch, rows missing; or None."""
    return _read_whole(part, "", threads=True).damage


def _checked(part: Path, known: Known) -> Answer:
    """`damage`, without the read when the part's sha256 is known intact (its summary
    taken then, or only its RESUME_COLUMNS read); of an intact part its sha256, summary,
    and RESUME_COLUMNS where it has no summary to go by. A part replaced while it was
    checked is read whole again, and its sha256 not kept: what was read would not be what
    was hashed."""
    before = file_identity(part)
    try:
        digest = _sha256(part)
    except OSError as e:
        return Answer(first_line(e))
    if digest in known.digests:
        answer = _resume_columns(part, digest, known.summary_alone(digest))
    else:
        answer = _read_whole(part, digest)
    if file_identity(part) != before:
        return _summarized(replace(_read_whole(part, ""), digest=None))
    return _summarized(answer)


def _resume_columns(part: Path, digest: str, summary: Summary | None) -> Answer:
    """A part known intact by its sha256: its summary if the record has it, else only
    RESUME_COLUMNS read (those it has)."""
    if summary is not None:
        return Answer(None, None, digest, summary)
    try:
        with pq.ParquetFile(part) as file:
            columns = [c for c in RESUME_COLUMNS if c in file.schema_arrow.names]
            kept = file.read(columns, use_threads=False) if len(columns) == 3 else None
    except (OSError, *CONVERSION_ERRORS) as e:  # the same bytes read whole before: never
        return Answer(first_line(e))
    return Answer(None, kept, digest)


def _summarized(answer: Answer) -> Answer:
    """`answer` with what it kept made a polars frame, and summarized, here on the
    checking thread (polars converts without the GIL): not on the resume's way to its
    first request (15 ms for a million rows' statuses)."""
    if answer.kept is None:
        return answer
    import polars  # here: this module is reached before the command's imports

    kept = polars.from_arrow(answer.kept)
    return replace(answer, kept=kept, summary=answer.summary or summarize(kept))


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
    """The sha256 of parts found intact in `parts_dir` (INTACT_RECORD)."""
    return known(parts_dir).digests


def known(parts_dir: Path) -> Known:
    """`parts_dir`'s INTACT_RECORD; nothing known when it is missing or unreadable: each
    part is then read whole (a summary it does not hold well: that part's columns read)."""
    try:
        record = json.loads((parts_dir.parent / INTACT_RECORD).read_bytes())
        digests = frozenset(d for d in record["sha256"] if isinstance(d, str))
        summaries = record.get("summaries", {})
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return Known()
    if not isinstance(summaries, dict):
        return Known(digests)
    kept = {d: Summary.from_json(v, d) for d, v in summaries.items() if d in digests}
    return Known(digests, {d: v for d, v in kept.items() if v is not None})


def remember_intact(
    parts_dir: Path,
    digests: Iterable[str],
    *,
    only: bool = False,
    summaries: Mapping[str, Summary | None] | None = None,
) -> None:
    """Add `digests` (and their `summaries`) to `parts_dir`'s INTACT_RECORD (`only`: they
    replace it). Replaced whole (a rename), never synced, and not at all where it cannot
    be written: a record lost or torn only costs a part one read whole."""
    with _record_lock:
        old = known(parts_dir)
        new = frozenset(digests) if only else old.digests | frozenset(digests)
        given = {d: s for d, s in (summaries or {}).items() if s is not None}
        summed = {d: s for d, s in {**old.summaries, **given}.items() if d in new}
        if new == old.digests and summed == old.summaries:
            return
        content = {
            "sha256": sorted(new),
            "summaries": {d: summed[d].to_json(d) for d in sorted(summed)},
        }
        record = parts_dir.parent / INTACT_RECORD
        temporary = temporary_name(record)
        try:
            temporary.write_text(json.dumps(content))
            os.replace(temporary, record)
        except OSError:
            with contextlib.suppress(OSError):  # a read-only disk refuses even this
                temporary.unlink(missing_ok=True)


def remember_part(part: Path) -> None:
    """A part whose bytes are good: just written whole here (those the writer made, CRCs
    and all), or moved here once its check found it intact; its summary read back from
    the very file hashed (a part replaced meanwhile is remembered by neither)."""
    before = file_identity(part)
    try:
        digest = _sha256(part)
    except OSError:
        return  # read whole at the next check
    summary = _summarized(_resume_columns(part, digest, None)).summary
    if file_identity(part) != before:
        return
    remember_intact(part.parent, [digest], summaries={digest: summary})


def _sha256(part: Path) -> str:
    """The file's sha256, streamed (hashlib lets the GIL go)."""
    with open(part, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def check_ahead(parts_dir: Path) -> None:
    """Start checking every part now in `parts_dir`, one after another on the ahead
    thread (the other core is the command's): `damaged_parts` takes the answers."""
    record = known(parts_dir)
    for part in sorted(parts_dir.glob(PART_GLOB)):
        ahead.start(_key(file_identity(part)), functools.partial(_checked, part, record))


def _key(identity: Identity | None) -> tuple[str, Identity] | None:
    """A part's check's key in pipeline.ahead (None: no file there)."""
    return ("part check", identity) if identity is not None else None


def damaged_parts(parts: Sequence[Path], *, remember: bool = True) -> list[tuple[Path, str]]:
    """Each part checked, two at a time (Arrow decodes and hashlib hashes without the
    GIL); an answer `check_ahead` has, or is working on, for the same file is taken
    instead. What was found intact is remembered (INTACT_RECORD) for the next check,
    unless not to `remember` (a command that writes nothing: `status`)."""
    directories = {part.parent for part in parts}
    records = [known(d) for d in directories]
    record = Known(
        frozenset().union(*(r.digests for r in records)),
        {d: s for r in records for d, s in r.summaries.items()},
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        found = [_answer(part, pool, record) for part in parts]
        answers = [(identity, asked, future.result()) for identity, asked, future in found]
    with _kept_lock:  # columns only of parts a resume asked ahead for: the rest, not needed
        for identity, asked, answer in answers:
            if identity is not None and answer.digest is not None:
                _kept[identity] = Checked(answer.kept if asked else None, answer.summary)
    for directory in directories if remember else ():
        intact = [a for p, (_, _, a) in zip(parts, answers, strict=True)
                  if p.parent == directory and a.digest is not None]  # fmt: skip
        every = {p for p in parts if p.parent == directory} >= set(directory.glob(PART_GLOB))
        remember_intact(  # every part here: the rest are gone
            directory,
            [a.digest for a in intact if a.digest],
            only=every,
            summaries={a.digest: a.summary for a in intact if a.digest},
        )
    return [
        (part, answer.damage)
        for part, (_, _, answer) in zip(parts, answers, strict=True)
        if answer.damage is not None
    ]


def _answer(
    part: Path, pool: ThreadPoolExecutor, record: Known
) -> tuple[Identity | None, bool, Future[Answer]]:
    """check_ahead's answer for this very file, with its identity and whether it was asked
    ahead (what it kept is taken by `checked`); checked here instead, beside it, when not
    started yet, or not asked about."""
    identity = file_identity(part)
    asked = ahead.started(_key(identity))
    started = ahead.take(_key(identity)) if asked else None
    if started is None:  # not asked, or not begun: checked here, beside the rest
        return identity, asked, pool.submit(_checked, part, record)
    return identity, asked, started


def checked_ahead(part: Path) -> Checked | None:
    """What `check_ahead`'s check of `part`, as it is now, kept for a resume, if it is
    done and found the part intact; else None (not started, not done, or damaged).
    Left for `damaged_parts` to take."""
    future = ahead.peek(_key(file_identity(part)))
    if future is None or not future.done() or future.cancelled():
        return None
    answer: Answer = future.result()
    return Checked(answer.kept, answer.summary) if answer.digest is not None else None


def checked(part: Path) -> Checked | None:
    """What the check of `part` kept for a resume, if this very file was found intact by
    `damaged_parts` as asked ahead (taken once: the memory is the caller's then)."""
    identity = file_identity(part)
    with _kept_lock:
        return _kept.pop(identity, None) if identity is not None else None
