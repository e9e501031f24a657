"""The damage check of part files, and the same check started ahead, beside the imports.

Every part is read whole with its page CRCs verified before a resume sends anything
(parts.check_or_set_aside). On a million finished rows that read is about half a second
of one core, spent in Arrow's C++ code without the GIL; the command's own imports (polars,
aiohttp, the pipeline) are as long and hold the GIL. So `check_ahead`, called as soon as
a run knows its output directory, starts reading the parts there on a thread of its own,
and `damaged_parts` takes those answers when it gets to the parts instead of reading them
again: the same check, on the other core, while the imports go on.

What a resume needs of an intact part checked ahead (`RESUME_COLUMNS`) is kept from that
read, for `checkpoint.resume_state` to take (`checked_columns`) instead of reading the part
a second time.

An answer is taken only for the very file it was about: same device, inode, size, change
and modification times. A part written or replaced since (journals folded, a shard taken
in, another run's) is read again then. A part not yet started is read where it is needed.

Only pyarrow (and no pipeline module that imports more) is imported here: the command line
reaches it before anything else.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import first_line
from pipeline.schema import ROW_INDEX
from pipeline.store.layout import PART_GLOB

# what Arrow raises on a value or a file it cannot take (parts.py converts records too)
CONVERSION_ERRORS = (pa.ArrowException, OverflowError, TypeError, ValueError)

Identity = tuple[int, int, int, int, int]  # device, inode, size, ctime, mtime: one file
Answer = tuple[str | None, pa.Table | None]  # why it is damaged; else RESUME_COLUMNS of it
_ahead: dict[Identity, Future[Answer]] = {}  # check_ahead's answers, by file
_kept: dict[Identity, pa.Table] = {}  # RESUME_COLUMNS of intact parts checked ahead
_ahead_lock = threading.Lock()
RESUME_COLUMNS = (ROW_INDEX, "status", "cost_usd")  # what checkpoint.resume_state reads


def damage(part: Path) -> str | None:
    """Why `part` cannot be trusted (unreadable, a CRC mismatch, rows missing), or None."""
    return _checked(part, threads=True)[0]


def _checked(part: Path, *, threads: bool = False) -> Answer:
    """`damage`, and of an intact part its RESUME_COLUMNS (those it has). Byte-array
    columns are read as dictionaries: every page is still read and its CRC checked, but no
    string is built for a row (a fifth less work than reading them plainly). `threads`:
    Arrow's own, for one part alone (not beside the imports, nor two parts at a time)."""
    try:
        metadata = pq.read_metadata(part)
        with pq.ParquetFile(  # the footer parsed once: 5 ms a 100-row-group part
            part, metadata=metadata, page_checksum_verification=True,
            read_dictionary=_byte_arrays(metadata),
        ) as file:  # fmt: skip
            table = file.read(use_threads=threads)
    except (OSError, *CONVERSION_ERRORS) as e:
        return first_line(e), None
    if table.num_rows != metadata.num_rows:
        return f"holds {table.num_rows} rows where its footer says {metadata.num_rows}", None
    if not set(RESUME_COLUMNS) <= set(table.column_names):
        return None, None
    return None, table.select(list(RESUME_COLUMNS))


def _byte_arrays(metadata: pq.FileMetaData) -> list[str]:
    """The top-level columns of strings or bytes: those Arrow can read as dictionaries;
    not RESUME_COLUMNS, kept as they are read (decoding a dictionary in Arrow imports
    pyarrow.compute, 50 ms on this thread while the command's imports need the GIL)."""
    schema = metadata.schema.to_arrow_schema()
    plain = (pa.string(), pa.large_string(), pa.binary(), pa.large_binary())
    return [f.name for f in schema if f.type in plain and f.name not in RESUME_COLUMNS]


def _identity(part: Path) -> Identity | None:
    try:
        st = os.stat(part)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns, st.st_mtime_ns)


def check_ahead(parts_dir: Path) -> None:
    """Start checking every part now in `parts_dir`, one after another on a thread of its
    own (the other core is the command's): `damaged_parts` takes the answers."""
    work: list[tuple[Path, Future[Answer]]] = []
    with _ahead_lock:
        for part in sorted(parts_dir.glob(PART_GLOB)):
            identity = _identity(part)
            if identity is not None and identity not in _ahead:
                _ahead[identity] = Future()
                work.append((part, _ahead[identity]))
    if work:
        threading.Thread(target=_check_all, args=(work,), name="part-check").start()


def _check_all(work: list[tuple[Path, Future[Answer]]]) -> None:
    """Each part not taken back by `damaged_parts`; none once the command has ended
    (refused, interrupted): the interpreter waits for this thread, and no one will ask.
    Not a daemon thread: one stopped inside Arrow's C++ code at exit may abort."""
    for part, future in work:
        if not threading.main_thread().is_alive():
            return
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(_checked(part))
        except BaseException as e:  # an answer still: damaged_parts raises it
            future.set_exception(e)


def damaged_parts(parts: Sequence[Path]) -> list[tuple[Path, str]]:
    """Each part read whole, two at a time (Arrow decodes without the GIL); an answer
    `check_ahead` has, or is working on, for the same file is taken instead."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        found = [_answer(part, pool) for part in parts]
        answers = [(identity, future.result()) for identity, future in found]
    with _ahead_lock:
        for identity, (_, kept) in answers:
            if identity is not None and kept is not None:
                _kept[identity] = kept
    return [
        (part, why) for part, (_, (why, _)) in zip(parts, answers, strict=True) if why is not None
    ]


def _answer(part: Path, pool: ThreadPoolExecutor) -> tuple[Identity | None, Future[Answer]]:
    """check_ahead's answer for this very file, with its identity (what it kept is taken by
    `checked_columns`); read here instead, beside it, when not started yet. A part it was
    not asked about: read now, and nothing kept of it (no resume asked for it)."""
    identity = _identity(part)
    with _ahead_lock:
        ahead = _ahead.pop(identity, None) if identity is not None else None
    if ahead is None:
        return None, pool.submit(_checked, part)
    return identity, ahead if not ahead.cancel() else pool.submit(_checked, part)


def checked_columns(part: Path) -> pa.Table | None:
    """RESUME_COLUMNS of `part` as its check read them, if this very file was found intact
    by `damaged_parts` (taken once: the memory is the caller's then); else None."""
    identity = _identity(part)
    with _ahead_lock:
        return _kept.pop(identity, None) if identity is not None else None
