"""Requests that may have been billed without a record, kept so a total is never short.

Two kinds: attempts sent whole whose answer never came (dropped, silent: "unseen"), and
attempts in flight when the run stopped without finishing them (a `kill -9`, a crash, or
cancelled after the grace period: "unrecorded"). Both are counted at their worst case.

While a run goes, its counts live in `unrecorded.bin`, a small file mapped into memory:
an update is a store into the page cache, with no system call, which the kernel keeps
when the process is killed (not on power loss: then the journal's last second is lost as
well). A run that ends writes the counts into run.json (`maybe_billed`, all runs so far)
with its token and removes the file; a file whose token run.json does not carry is a run
that died: `status` and `report` say what it left, and the next run counts it in the
budget and carries it on. Answers without usage are counted here too (at their worst
case), so a crash does not drop them from the next run's budget either.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import secrets
import struct
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

from pipeline.store.layout import LOCK, RUN_RECORD, UNRECORDED_FILE

FILE = UNRECORDED_FILE
MAGIC = b"PLUNREC1"
# magic, token, then pairs (count, nano-USD): in flight, unseen, unrecorded, unknown cost
LAYOUT = struct.Struct("<8sq8q")
IN_FLIGHT, IN_FLIGHT_USD, UNSEEN, UNSEEN_USD, UNRECORDED, UNRECORDED_USD, UNKNOWN, UNKNOWN_USD = (
    range(8)
)
NANO = Decimal(10**9)


def nano_usd(usd: Decimal) -> int:
    """USD in whole billionths, rounded up: a worst case never shrinks in the counting."""
    return int((usd * NANO).to_integral_value(ROUND_CEILING))


@dataclass(frozen=True)
class MaybeBilled:
    """Requests that may have been billed beyond the recorded costs, at their worst case."""

    unseen: int = 0
    unseen_usd: float = 0.0
    unrecorded: int = 0  # in flight when a run stopped, never finished
    unrecorded_usd: float = 0.0
    unknown_usd: float = 0.0  # answers without usage (their rows are recorded, cost null)

    def __add__(self, other: MaybeBilled) -> MaybeBilled:
        return MaybeBilled(
            self.unseen + other.unseen, self.unseen_usd + other.unseen_usd,
            self.unrecorded + other.unrecorded, self.unrecorded_usd + other.unrecorded_usd,
            self.unknown_usd + other.unknown_usd,
        )  # fmt: skip

    @property
    def worst_usd(self) -> float:
        """What the budget counts for them."""
        return self.unseen_usd + self.unrecorded_usd + self.unknown_usd

    def to_dict(self) -> dict[str, Any]:
        return {
            "unseen_requests": self.unseen,
            "unseen_worst_usd": self.unseen_usd,
            "unrecorded_requests": self.unrecorded,
            "unrecorded_worst_usd": self.unrecorded_usd,
        }

    @classmethod
    def from_dict(cls, data: Any) -> MaybeBilled:
        if not isinstance(data, dict):
            return cls()
        try:
            return cls(
                int(data.get("unseen_requests") or 0), float(data.get("unseen_worst_usd") or 0),
                int(data.get("unrecorded_requests") or 0),
                float(data.get("unrecorded_worst_usd") or 0),
            )  # fmt: skip
        except (TypeError, ValueError):
            return cls()


def _counts(cells: Any) -> MaybeBilled:
    """A stopped run's counts: what was in flight is unrecorded now."""
    return MaybeBilled(
        cells[UNSEEN], cells[UNSEEN_USD] / 1e9,
        cells[UNRECORDED] + cells[IN_FLIGHT],
        (cells[UNRECORDED_USD] + cells[IN_FLIGHT_USD]) / 1e9,
        cells[UNKNOWN_USD] / 1e9,
    )  # fmt: skip


class Unrecorded:
    """This run's counts, in the mapped file; `carried`: what a dead run left."""

    def __init__(self, directory: Path, carried: MaybeBilled = MaybeBilled()) -> None:
        self.path = directory / FILE
        self.token = secrets.randbits(63)
        start = [0] * 8
        start[UNSEEN], start[UNSEEN_USD] = carried.unseen, round(carried.unseen_usd * 1e9)
        start[UNRECORDED] = carried.unrecorded
        start[UNRECORDED_USD] = round(carried.unrecorded_usd * 1e9)
        start[UNKNOWN_USD] = round(carried.unknown_usd * 1e9)
        staged = self.path.with_name(FILE + ".tmp")
        staged.write_bytes(LAYOUT.pack(MAGIC, self.token, *start))
        os.replace(staged, self.path)  # the dead run's file gives way whole, never torn
        with self.path.open("r+b") as file:
            self._map = mmap.mmap(file.fileno(), LAYOUT.size)
        self._views = [memoryview(self._map)]  # released before the map can close
        self._views.append(self._views[0][16:])
        self.cells = self._views[1].cast("q")
        self._views.append(self.cells)

    def sending(self, nano: int) -> None:
        self.cells[IN_FLIGHT] += 1
        self.cells[IN_FLIGHT_USD] += nano

    def ended(self, nano: int, unseen: bool) -> None:
        cells = self.cells
        cells[IN_FLIGHT] -= 1
        cells[IN_FLIGHT_USD] -= nano
        if unseen:
            cells[UNSEEN] += 1
            cells[UNSEEN_USD] += nano

    def unknown(self, nano: int) -> None:
        self.cells[UNKNOWN] += 1
        self.cells[UNKNOWN_USD] += nano

    def counts(self) -> MaybeBilled:
        return _counts(self.cells)

    def discard(self) -> None:
        """run.json holds the counts now (with this token): the file is not needed."""
        self.close()
        with contextlib.suppress(OSError):
            self.path.unlink()

    def close(self) -> None:
        if self._map.closed:
            return
        for view in reversed(self._views):
            view.release()
        self._map.close()


def left_by_dead_run(directory: Path) -> MaybeBilled | None:
    """The counts a run left when it died (killed, crashed), None when none did."""
    try:
        data = (directory / FILE).read_bytes()
        magic, token, *cells = LAYOUT.unpack(data[: LAYOUT.size])
    except (OSError, struct.error):
        return None
    if magic != MAGIC or token == run_record(directory).get("run_token"):
        return None  # the run ended and wrote its counts; only the file's removal was lost
    return _counts(cells)


def run_record(directory: Path) -> dict[str, Any]:
    try:
        record = json.loads((directory / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def running(directory: Path) -> bool:
    """A run holds the output's lock (lock.lock_output): its file is live."""
    try:
        handle = (directory / LOCK).open("rb")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def notes(directory: Path) -> list[str]:
    """What status and report say of requests that may have been billed unrecorded."""
    recorded = MaybeBilled.from_dict(run_record(directory).get("maybe_billed"))
    dead = left_by_dead_run(directory)
    live = dead is not None and running(directory)
    lines: list[str] = []
    if dead is not None and dead.unrecorded:
        when = "are in flight now (a run is going)" if live else "were in flight and unrecorded"
        tail = "" if live else " when the run stopped"
        lines.append(
            f"{dead.unrecorded:,} requests {when}{tail} (they may have been billed, up to "
            f"${dead.unrecorded_usd:,.4f} at their worst case)"
        )
    if recorded.unrecorded:
        lines.append(
            f"{recorded.unrecorded:,} requests were in flight and unrecorded when earlier "
            f"runs stopped (they may have been billed, up to ${recorded.unrecorded_usd:,.4f} "
            "at their worst case)"
        )
    unseen = recorded + (dead or MaybeBilled())
    if unseen.unseen:
        lines.append(unseen_line(unseen.unseen, unseen.unseen_usd))
    return lines


def unseen_line(count: int, usd: float) -> str:
    return (
        f"{count:,} requests were sent whole but their answers never came (dropped, timed "
        f"out): they may have been billed unseen, up to ${usd:,.4f} at their worst case"
    )
