"""Rows to do become batches: rendered as online, cut by count, size and budget, and
created by the crash-safe protocol.

    intent on disk (fsync)  ->  POST /v1/messages/batches  ->  batch id on disk (fsync)

A create whose answer never comes (dropped, timed out, a 5xx, 408, 409) may have made the
batch: the account's batches created since the intent are listed and the one that matches
(request count, creation time, not already ours) is adopted; only when none does is it
created again, with the same custom_ids. Each create call is counted on disk before it is
sent, and asks the budget first (batch/budget.py): one beyond the intent's first may have
made a batch nobody will see. A create answered without an id is looked for the same way; not
found, it is the runner's to mark lost. A 413 splits the batch in two; another refusal
abandons the intent (nothing was created) and stops the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pipeline.batch.budget import BatchBudget
from pipeline.batch.http import BatchApi, unix_time
from pipeline.errors import (
    ApiRejectsEverything,
    BatchApiError,
    CreateUnconfirmed,
    CreateWithoutId,
    UsageError,
)
from pipeline.pricing import BATCH_DISCOUNT, PriceTable
from pipeline.send.budget import path_worst_usd, unpriced, worst_case_usd
from pipeline.store.book import ABANDONED, UNCONFIRMED, BatchBook, Entry, Status, custom_id

MAX_BATCH_BYTES = 256 * 1024 * 1024  # the API's limit on one create's body
MAX_BYTES_ENV = "PIPELINE_BATCH_MAX_BYTES"  # a lower one, for a gateway that takes less
CLOCK_SKEW_S = 3.0  # beyond the offset its Date header shows (1 s steps, and latency)
LIST_AGAIN_S = (1.0, 3.0)  # a batch just made may take a moment to be listed
SETTLE_MARGIN_S = 10.0  # a create is over by timeout_s after it was sent, plus this
CREATE_TRIES = 5  # creates without an answer (and nothing found in the list) before giving up
ENVELOPE = len(b'{"requests":[]}')


def max_batch_bytes() -> int:
    value = os.environ.get(MAX_BYTES_ENV)
    return int(value) if value else MAX_BATCH_BYTES


def compact(data: bytes) -> bytes:
    """An exact-size copy: orjson's bytes keep their whole working buffer (~4 KB each
    whatever the length), and a batch holds up to 100,000 of them (measured: 650 MB
    of RSS for a 100k-row submit, 288 MB with copies)."""
    return bytes(memoryview(data))


def request_line(row: int, nonce: str, params: bytes) -> bytes:
    return b'{"custom_id":"' + custom_id(row, nonce).encode() + b'","params":' + params + b"}"


def create_body(nonce: str, rows: Sequence[int], params: Sequence[bytes]) -> bytes:
    lines = (request_line(r, nonce, p) for r, p in zip(rows, params, strict=True))
    return b'{"requests":[' + b",".join(lines) + b"]}"


def request_total(batch: dict[str, Any]) -> int:
    counts = batch.get("request_counts") or {}
    return sum(v for v in counts.values() if isinstance(v, int)) if isinstance(counts, dict) else 0


def status_of(batch: dict[str, Any], *, adopted: bool = False) -> Status:
    counts = batch.get("request_counts")
    return Status(
        batch_id=str(batch["id"]),
        state=str(batch.get("processing_status") or "in_progress"),
        adopted=adopted,
        counts={k: v for k, v in counts.items() if isinstance(v, int)}
        if isinstance(counts, dict)
        else {},
        created_at=batch.get("created_at"),
        expires_at=batch.get("expires_at"),
        ended_at=batch.get("ended_at"),
    )


@dataclass
class Pending:
    """A batch being filled: each request's row, try, params and worst case."""

    rows: list[int] = field(default_factory=list)
    tries: list[int] = field(default_factory=list)
    params: list[bytes] = field(default_factory=list)
    worsts: list[Decimal] = field(default_factory=list)
    size: int = ENVELOPE

    def add(self, row: int, tries: int, params: bytes, worst: Decimal) -> None:
        self.rows.append(row)
        self.tries.append(tries)
        self.params.append(params)
        self.worsts.append(worst)
        self.size += len(params) + 50  # the custom_id and its punctuation, at most

    def worst(self) -> Decimal:
        return sum(self.worsts, Decimal(0))

    def halves(self) -> tuple[Pending, Pending]:
        mid = len(self.rows) // 2
        first, second = Pending(), Pending()
        for i in range(len(self.rows)):
            (first if i < mid else second).add(
                self.rows[i], self.tries[i], self.params[i], self.worsts[i]
            )
        return first, second


class Creator:
    """Creates batches by the protocol; `note` tells the user what happened."""

    def __init__(
        self,
        api: BatchApi,
        book: BatchBook,
        intent_api: dict[str, Any],
        note: Callable[[str], None],
        *,
        create_timeout_s: float = 120.0,
        budget: BatchBudget | None = None,
    ) -> None:
        """`budget` is asked before each create call (None: no limit)."""
        self.api, self.book, self.intent_api, self.note = api, book, intent_api, note
        self.budget = budget or BatchBudget(None, Decimal(0), book)
        # until then, a create sent for an intent may still be made on the server: only
        # after it may "not listed" mean "not made"
        self.settle_s = create_timeout_s + SETTLE_MARGIN_S
        self.max_bytes = max_batch_bytes()
        self.requests = 0  # requests in batches this run created

    async def create(self, pending: Pending) -> list[Entry]:
        """Create the batch (or two halves of it, after a 413); the entries made. Its rows'
        worst cases are reserved in the budget already."""
        entry = self.book.write_intent(
            pending.rows, pending.tries, pending.worst(), request_bytes=pending.size,
            **self.intent_api,
        )  # fmt: skip
        self.budget.hold(entry)
        try:
            await self.send(entry, pending.params)
            self.requests += len(pending.rows)
            return [entry]
        except BatchApiError as e:
            if e.status != 413 or len(pending.rows) < 2:
                if e.status == 413:  # one request too large: refused, nothing was made
                    self.abandon(entry, str(e))
                    raise _stop(e) from e
                raise
            self.abandon(
                entry, f"refused as too large ({pending.size:,} bytes): split in two", split=True
            )
            self.max_bytes = min(self.max_bytes, pending.size // 2)
            made = []
            for half in pending.halves():
                made += await self.create(half)
            return made

    async def send(self, entry: Entry, params: Sequence[bytes]) -> None:
        """Create `entry`'s batch, or adopt it when a create's answer was lost."""
        intent = entry.intent
        body = create_body(intent.nonce, intent.rows, params)
        for _ in range(CREATE_TRIES):
            await self._count_create(entry)
            try:
                batch = await self.api.create(body)
            except CreateUnconfirmed as e:
                self.note(f"batch {intent.number}: {e}; looking for it among the account's batches")
                if await self.adopt(entry):
                    return
                continue  # not made: create it again, with the same custom_ids
            except CreateWithoutId as e:
                self.note(f"batch {intent.number}: {e}; looking for it among the account's batches")
                if await self.adopt(entry):
                    return
                e.intent_number = intent.number
                raise  # made, maybe, and not to be found: not created again blind
            except BatchApiError as e:
                if e.status != 413:
                    self.abandon(entry, str(e))
                    raise _stop(e) from e
                raise
            self._confirm(entry, batch, adopted=False)  # on disk before anything waits on it
            return
        raise BatchApiError(
            f"batch {intent.number}: {CREATE_TRIES} creates got no answer and none is listed; "
            "run again later (the intent is kept: a resume looks for it first)"
        )

    async def adopt(self, entry: Entry) -> bool:
        """Find the batch a lost create made: same request count, created since the intent,
        no entry's yet. (Its custom_ids confirm it once it ends: collect.foreign.)"""
        intent = entry.intent
        for wait in self._list_waits(intent.intent_at):
            await self.api.sleep(wait)  # an interrupt ends it: the next run looks again
            since = intent.intent_at + self.api.server_offset_s - CLOCK_SKEW_S  # server time
            listed = await self.api.created_since(since)
            claimed = self.book.claimed_ids()
            if entry.status is not None:
                claimed.update(entry.status.foreign)
            found = [
                b
                for b in listed
                if b.get("id") not in claimed and request_total(b) == len(intent.rows)
            ]
            if found:
                batch = min(
                    found,
                    key=lambda b: abs((unix_time(b.get("created_at")) or 0) - intent.intent_at),
                )
                self._confirm(entry, batch, adopted=True)
                self.note(f"batch {intent.number}: adopted {batch['id']} (not created again)")
                return True
        return False

    async def _count_create(self, entry: Entry) -> None:
        """Ask the budget, then put the create about to be sent on disk."""
        status = entry.status
        creates = (status.creates if status is not None else 0) + 1
        await self.budget.before_create(entry, creates)
        if status is None or status.batch_id is not None:
            status = entry.status = Status(batch_id=None, state=UNCONFIRMED).carrying(status)
        status.creates = creates
        self.book.save(entry)

    def _confirm(self, entry: Entry, batch: dict[str, Any], *, adopted: bool) -> None:
        """The batch is the intent's: its id on disk, what was learned before kept."""
        entry.status = status_of(batch, adopted=adopted).carrying(entry.status)
        self.book.save(entry)

    def _list_waits(self, intent_at: float) -> list[float]:
        """When to list: now, shortly after, and once more when any create sent for the
        intent must be over (one listing if that time has passed already)."""
        left = intent_at + self.settle_s - self.api.clock.now()
        if left <= 0:
            return [0.0]
        waits = [0.0, *LIST_AGAIN_S]
        return [*waits, max(0.0, left - sum(waits))]

    def forget_lost_simulators(self, here: str) -> None:
        """Batches live on the server they were made on: a --simulate run's simulator ended
        with that run (its rows are sent again; it cost nothing); a real one must be asked."""
        for entry in self.book.pending():
            if entry.intent.base_url == here:
                continue
            if entry.intent.simulated:
                self.abandon(entry, "its simulator ended with the run that made it")
                continue
            raise UsageError(
                f"batch {entry.batch_id or entry.intent.number} of this output is on "
                f"{entry.intent.base_url}: run with --base-url {entry.intent.base_url} to "
                "collect it (or `pipeline cancel` it there)"
            )

    def abandon(self, entry: Entry, why: str, *, split: bool = False) -> None:
        """Nothing was made: its reservation is released (`split`: its halves have it)."""
        entry.status = Status(batch_id=None, state=ABANDONED, note=why).carrying(entry.status)
        self.book.save(entry)
        if split:
            self.budget.handed_on(entry)
        else:
            self.budget.released(entry)


def _stop(error: BatchApiError) -> Exception:
    """A create the API refused: nothing was made; no other row would fare better."""
    if error.status in (401, 403):
        return ApiRejectsEverything(f"the API refused the batch: {error}")
    return ApiRejectsEverything(f"the API refused to create a batch: {error}")


def too_large(params: bytes, max_bytes: int) -> str:
    return f"the request is {len(params):,} bytes: more than a batch may hold ({max_bytes:,} bytes)"


def batch_worst_case(
    body: dict[str, Any],
    params: bytes,
    prices: PriceTable,
    limit: Decimal | None,
    later: Sequence[tuple[str, int]] = (),
) -> Decimal:
    """A request's worst case at batch prices (0 for an unpriced model when no budget
    needs it; with a budget, an unpriced model stops the run), with the `later` requests
    its row may still need when there is a budget (a cascade's later stages, in batches)."""
    price = prices.lookup(str(body["model"]))
    if price is None:
        if limit is None:
            return Decimal(0)
        raise unpriced(body["model"])
    if limit is None:
        return worst_case_usd(body, params, price) * BATCH_DISCOUNT
    return path_worst_usd(body, params, price, later, prices.lookup) * BATCH_DISCOUNT
