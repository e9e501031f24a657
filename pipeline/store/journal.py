"""The journal: every finished row, appended the moment its answer arrives.

One JSON line a row, handed to the OS with `os.write` at once (a crash of this process
loses nothing written) and fsync'd at least every second (a crash of the machine loses at
most the last second). When it holds enough rows it is sealed: renamed to
`journal-NNNNNN.sealed`, where NNNNNN is the number of the part file it will become, and a
new journal is started. A torn last line (a kill in the middle of a write) is recognised
and skipped when the journal is read back.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from pipeline.store import durable
from pipeline.store.layout import JOURNAL
from pipeline.store.layout import SEALED_GLOB as SEALED_GLOB
from pipeline.store.layout import sealed_name as sealed_name
from pipeline.store.layout import sealed_number as sealed_number

LIVE = JOURNAL  # the live journal's name (layout.JOURNAL)


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LIVE
        self.rows = 0  # in the live journal
        self.dirty = False  # written since the last fsync
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size  # bytes of whole records: where to cut back

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict[str, Any]) -> None:
        """Write one record whole, or not at all: a write that fails part-way (disk full)
        is cut back, so the next record never lands glued to a torn one."""
        data = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        try:
            written = os.write(self._fd, data)  # a regular file takes it all at once
            if written < len(data):  # a short write is handled
                line = memoryview(data)[written:]
                while line:
                    line = line[os.write(self._fd, line) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)
        self.rows += 1
        self.dirty = True

    def sync(self) -> None:
        if self.dirty:
            self.dirty = False
            os.fsync(self._fd)

    def sync_handle(self) -> int | None:
        """A duplicate descriptor to fsync off the event loop (None: nothing new to sync).

        A duplicate stays valid if the journal is sealed meanwhile, and syncs the same file.
        """
        if not self.dirty:
            return None
        self.dirty = False
        return os.dup(self._fd)

    def seal(self, number: int) -> Path:
        """Close the live journal as `journal-NNNNNN.sealed` and start a new one. On a
        failure the live journal stays open as it was, so appends go on working."""
        self.sync()
        sealed = self.directory / sealed_name(number)
        os.replace(self.path, sealed)  # the open descriptor now writes to `sealed`
        try:
            fd = self._open()
        except OSError:  # no room for a new file: back as it was
            os.replace(sealed, self.path)
            raise
        os.close(self._fd)
        self._fd = fd
        self.rows = self._size = 0
        durable.sync_directory(self.directory)
        return sealed

    def close(self) -> None:
        try:
            self.sync()
        finally:  # a failing fsync must not leak the descriptor
            os.close(self._fd)


def fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a journal file, a line at a time (a sealed journal's 20,000 rows are
    never all in memory as Python objects); a torn or garbled line is skipped, with a
    warning."""
    with path.open("rb") as file:
        for number, line in enumerate(file, 1):
            if line == b"\n":
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                # only the last line can lack its newline: a write the kill cut short
                torn = not line.endswith(b"\n")
                what = "torn last record (the process was killed mid-write)" if torn else "bad line"
                print(
                    f"warning: {path}: skipped a {what} at line {number}; that row will be sent "
                    "again",
                    file=sys.stderr,
                )
                continue
            if isinstance(record, dict):
                yield record
