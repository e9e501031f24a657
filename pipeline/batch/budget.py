"""Batch mode's side of the budget: each batch asks the run's `LocalBudget` as an online
request does (send/budget.py). Its rows' worst cases are reserved as they are put in it;
before each create call it asks again (a create beyond its intent's first counts the
batch once more, spent for good: the earlier one may exist unseen); it is settled when it
is collected (released: its rows' costs were spent as they were recorded) or abandoned
(nothing was made), or lost (spent for good, at its worst case). Rows whose cost stays
unknown are spent at their worst case.

A run starts from what the book says: every batch not yet settled reserved, every create
beyond an intent's first and every lost batch spent (book.maybe_spent), with what was
spent before (the resume's rows, a dead online run's maybe-billed requests).
"""

from __future__ import annotations

from decimal import Decimal

from pipeline.send.budget import LocalBudget
from pipeline.store.book import BatchBook, Entry


class BatchBudget:
    """max_cost_usd for one batch run (no limit: every call is a no-op)."""

    def __init__(self, limit: Decimal | None, spent_before: Decimal, book: BatchBook) -> None:
        self.local = (
            LocalBudget(
                limit, spent_before + book.maybe_spent(), held_usd=book.pending_worst(),
                held_in="batches",
            )
            if limit is not None
            else None
        )  # fmt: skip
        self.held = {e.intent.number for e in book.pending()}  # batches whose worst is reserved

    async def reserve_row(self, worst: Decimal) -> None:
        """A row going into the batch being filled: BudgetReached when it does not fit (at
        once: what is in flight are batches, settled by this run's later polls)."""
        if self.local is not None:
            await self.local.reserve(worst)

    def release_rows(self, worst: Decimal) -> None:
        """Rows reserved for a batch that will not be created (the run stops first)."""
        if self.local is not None:
            self.local.settle(worst, 0.0)

    def hold(self, entry: Entry) -> None:
        """The batch being created has its rows' reservations (a half of a batch split
        after a 413 has its half of them)."""
        self.held.add(entry.intent.number)

    def handed_on(self, entry: Entry) -> None:
        """Split in two after a 413: its halves hold its reservation now."""
        self.held.discard(entry.intent.number)

    async def before_create(self, entry: Entry, creates: int) -> None:
        """Before the intent's `creates`-th create call: BudgetReached if it does not fit."""
        if self.local is None:
            return
        number, worst = entry.intent.number, entry.intent.worst
        if number in self.held and creates > 1:  # the earlier create may exist unseen
            self.held.discard(number)
            self.local.settle(worst, None)
        if number in self.held:
            self.local.confirm(worst)  # reserved: still within, after a lower --max-cost?
            return
        await self.local.reserve(worst)
        self.held.add(number)

    def released(self, entry: Entry) -> None:
        """Collected (its rows' costs spent as recorded) or abandoned (nothing was made)."""
        self._settle(entry, 0.0)

    def lost(self, entry: Entry) -> None:
        """Gone with its rows: its worst case stays spent for good."""
        self._settle(entry, None)

    def spend(self, usd: Decimal) -> None:
        """A row's cost as recorded, or an unknown one's worst case."""
        if self.local is not None and usd:
            self.local.spend(usd)

    def _settle(self, entry: Entry, actual_usd: float | None) -> None:
        if self.local is not None and entry.intent.number in self.held:
            self.held.discard(entry.intent.number)
            self.local.settle(entry.intent.worst, actual_usd)
