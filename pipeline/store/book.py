"""The batch book: every Message Batch this output directory sent, on disk, so that a
`kill -9` at any instant re-charges nothing.

    OUTPUT/batches/batch-NNNNNN.intent.json   written (fsync'd) BEFORE the create call:
        its rows, each row's try number, the custom_id nonce, the time, its worst case
    OUTPUT/batches/batch-NNNNNN.json          written (fsync'd) before each create call,
        counting the creates sent; then the moment the create answers: the batch id; then
        its last known state and counts; once collected (or lost), the rows that go into a
        later batch (errored with a transient type, expired, canceled, not answered)

An intent without a batch id is a create that may or may not have reached the server (its
answer lost, or the process killed mid-call): the runner lists the account's batches and
adopts the one that matches before it would ever create it again. A row sits in at most one
batch not yet collected, and a resume sends none of those rows again. Every create sent
counts against the budget: a batch lost with its rows (a 404, a create answered without an
id) and each create beyond an intent's first (an earlier one may exist unseen) stay counted
at their worst case for good (`maybe_spent`).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import orjson

from pipeline.errors import UsageError
from pipeline.store import durable
from pipeline.store.layout import BATCHES_DIR as BATCHES_DIR
from pipeline.store.layout import INTENT_GLOB, intent_name, status_name

_Record = TypeVar("_Record", "Intent", "Status")
CUSTOM_ID = re.compile(r"^r(\d{1,19})-([0-9a-f]{12})$")
# states of a status file: the server's, then ours
IN_PROGRESS, CANCELING, ENDED = "in_progress", "canceling", "ended"
COLLECTED = "collected"  # every result is in the journal: the batch is done with
ABANDONED = "abandoned"  # never created (refused), or lost with its simulator: rows to do
UNCONFIRMED = "unconfirmed"  # a create sent without an answer yet (or adopted, not ours)
LOST = "lost"  # the server lost it (404, no id, stuck past its expiry): its rows to do
SETTLED = (COLLECTED, ABANDONED, LOST)


def custom_id(row: int, nonce: str) -> str:
    """`r<row>-<nonce>`: maps back to the input row; the nonce (one per intent) confirms
    that a batch adopted from the account's list is this intent's and no one else's."""
    return f"r{row}-{nonce}"


def parse_custom_id(text: str) -> tuple[int, str] | None:
    match = CUSTOM_ID.match(text)
    return (int(match.group(1)), match.group(2)) if match else None


@dataclass(frozen=True)
class Intent:
    number: int
    nonce: str
    rows: list[int]
    tries: list[int]  # for each row, which try this batch is (1 = its first)
    intent_at: float  # UNIX time just before the first create call
    worst_usd: str  # what the batch can cost at most, at batch prices (Decimal text)
    base_url: str
    api_key_env: str
    auth: str
    anthropic_version: str
    simulated: bool = False  # on a --simulate run's simulator: gone when the run ends
    request_bytes: int = 0

    @property
    def worst(self) -> Decimal:
        return Decimal(self.worst_usd)


@dataclass
class Status:
    batch_id: str | None
    state: str
    adopted: bool = False  # found again by listing, not told by the create's answer
    counts: dict[str, int] = field(default_factory=dict)
    created_at: str | None = None
    expires_at: str | None = None
    ended_at: str | None = None
    polled_at: float | None = None
    again: list[list[int]] = field(default_factory=list)  # [row, tries used] to send again
    foreign: list[str] = field(default_factory=list)  # adopted, then found not ours
    note: str | None = None  # why abandoned or lost
    creates: int = 0  # create calls sent for this intent

    def carrying(self, before: Status | None) -> Status:
        """This status, with what `before` learned of the intent kept: the batches found
        not ours (never adopted again) and the creates sent (counted by the budget)."""
        if before is not None:
            self.foreign, self.creates = before.foreign, before.creates
        return self


@dataclass
class Entry:
    intent: Intent
    status: Status | None  # None: the create was not confirmed

    @property
    def settled(self) -> bool:
        return self.status is not None and self.status.state in SETTLED

    @property
    def batch_id(self) -> str | None:
        return self.status.batch_id if self.status else None


class BatchBook:
    """The batches of one output directory, read at start and kept in step with disk."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir / BATCHES_DIR
        self.entries: list[Entry] = list(self._read())

    def _read(self) -> Iterator[Entry]:
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob(INTENT_GLOB)):
            intent = _record(Intent, path)
            status_path = self._status_path(intent.number)
            status = _record(Status, status_path) if status_path.exists() else None
            yield Entry(intent, status)

    def _status_path(self, number: int) -> Path:
        return self.dir / status_name(number)

    def pending(self) -> list[Entry]:
        """Batches not yet collected: their rows must not be sent again."""
        return [e for e in self.entries if not e.settled]

    def pending_rows(self) -> list[int]:
        return [row for e in self.pending() for row in e.intent.rows]

    def pending_worst(self) -> Decimal:
        return sum((e.intent.worst for e in self.pending()), Decimal(0))

    def tries_used(self) -> dict[int, int]:
        """Rows a collected (or lost) batch gave back, with the tries they have used."""
        used: dict[int, int] = {}
        for entry in self.entries:
            if entry.status is not None and entry.status.state in (COLLECTED, LOST):
                used.update((row, tries) for row, tries in entry.status.again)
        return used

    def maybe_spent(self) -> Decimal:
        """What creates may have cost beyond what was collected, at the worst case: lost
        batches whole, and every create beyond an intent's first."""
        total = Decimal(0)
        for entry in self.entries:
            status = entry.status
            if status is None:
                continue
            extra = max(0, status.creates - 1) + (status.state == LOST)
            total += entry.intent.worst * extra
        return total

    def write_intent(
        self, rows: Sequence[int], tries: Sequence[int], worst: Decimal, **api: Any
    ) -> Entry:
        """On disk before the create call: a crash from here on is found again."""
        number = 1 + max((e.intent.number for e in self.entries), default=0)
        intent = Intent(
            number=number,
            nonce=secrets.token_hex(6),
            rows=list(rows),
            tries=list(tries),
            intent_at=time.time(),
            worst_usd=str(worst),
            **api,
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / intent_name(number)
        durable.write_bytes(path, orjson.dumps(asdict(intent)))
        entry = Entry(intent, None)
        self.entries.append(entry)
        return entry

    def save(self, entry: Entry) -> None:
        assert entry.status is not None
        path = self._status_path(entry.intent.number)
        durable.write_bytes(path, orjson.dumps(asdict(entry.status)))

    def claimed_ids(self) -> set[str]:
        """Batch ids already some entry's (or known not to be ours)."""
        ids = {e.batch_id for e in self.entries if e.batch_id}
        for entry in self.entries:
            if entry.status is not None:
                ids.update(entry.status.foreign)
        return ids


@dataclass(frozen=True)
class Uncollected:
    """Rows in batches sent and not yet collected: bought already, not to send again."""

    rows: list[int]  # sorted, none of them done
    batches: int  # every batch not settled, intents whose create is unconfirmed included


def uncollected(out_dir: Path, done: Collection[int] = ()) -> Uncollected:
    """What the book of `out_dir` holds not yet collected (read only). Rows of `done` were
    collected before a crash mid-collection: they count as done, not here."""
    book = BatchBook(out_dir)
    rows = sorted(set(book.pending_rows()).difference(done))
    return Uncollected(rows, len(book.pending()))


def _record(kind: type[_Record], path: Path) -> _Record:
    try:
        return kind(**_load(path))
    except TypeError:
        raise UsageError(f"{path}: not a batch record of this version (fields missing)") from None


def _load(path: Path) -> dict[str, Any]:
    try:
        content = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        raise UsageError(f"{path}: cannot read this batch record: {e}") from None
    if not isinstance(content, dict):
        raise UsageError(f"{path}: not a batch record")
    return content
