"""The hard budget, the one place it is kept: a request is sent only while spent + the
worst case of everything in flight stays within max_cost_usd. Online rows, a batch run's
batches and a Ray cluster's workers all ask a `Budget` (reserve, then settle), and every
refusal is worded by `refusal`.

The worst case of a request is its input priced at the highest input rate it could be
billed at, plus max_tokens at the output price. Input tokens are bounded by UTF-8 bytes / 2,
well above what the local estimate (bytes / 4) or a real tokenizer counts for any text.
A request whose cost stays unknown (an answer without usage, or one that ended without a
record) is counted at that worst case: the limit holds whatever the server reports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from decimal import ROUND_CEILING, Decimal
from typing import Any, Protocol

from pipeline.errors import BudgetReached
from pipeline.pricing import MILLION, Price


def worst_case_usd(body: dict[str, Any], body_bytes: bytes, price: Price) -> Decimal:
    input_tokens = len(body_bytes) // 2 + 1
    input_rate = max(price.input, price.cache_write_5m, price.cache_write_1h)
    output_rate = price.output
    if price.long_context is not None:  # the long-context rate may apply to a large request
        input_rate = max(input_rate, price.long_context.cache_write_1h, price.long_context.input)
        output_rate = max(output_rate, price.long_context.output)
    max_tokens = int(body.get("max_tokens", 0))
    return (input_tokens * input_rate + max_tokens * output_rate) / MILLION


def path_worst_usd(
    body: dict[str, Any],
    body_bytes: bytes,
    price: Price,
    later: Sequence[tuple[str, int]],
    lookup: Callable[[str], Price | None],
) -> Decimal:
    """A request's worst case, and that of the `later` requests (model, count) its row may
    still need (a cascade's later stages: the same body to another model). BudgetReached
    when a later model has no price: the limit could not be kept."""
    worst = worst_case_usd(body, body_bytes, price)
    for model, count in later:
        later_price = lookup(model)
        if later_price is None:
            raise unpriced(model)
        worst += count * worst_case_usd(body, body_bytes, later_price)
    return worst


def nano_usd(usd: Decimal) -> int:
    """`usd` in billionths of a dollar, rounded up: how the book of requests in flight
    counts a worst case."""
    return int((usd * 1_000_000_000).to_integral_value(ROUND_CEILING))


def unpriced(model: object) -> BudgetReached:
    """The one text of a budget that cannot be kept: a model without a price."""
    return BudgetReached(
        f"cannot keep max_cost_usd: no price for model {str(model)!r}"
        " (add it under [pricing] in the job file)"
    )


class Budget(Protocol):
    """max_cost_usd as every sender asks it: a request's worst case reserved before it is
    sent, settled once its cost is known. `LocalBudget` is one run's (and, with
    `held_in`, a batch run's); ray/worker.py's `ClusterBudget` leases from the pool actor's."""

    async def reserve(self, worst: Decimal) -> None:
        """Wait until `worst` fits beside what is in flight; BudgetReached if it never will."""

    def settle(self, worst: Decimal, actual_usd: float | None) -> None:
        """The request ended: `actual_usd` is what it cost, None when that is unknown."""


def refusal(
    spent: Decimal,
    limit: Decimal,
    worst: Decimal,
    *,
    unknown: int = 0,
    held: Decimal = Decimal(0),
    held_in: str | None = None,
) -> BudgetReached:
    """The one text of a budget's refusal. `held_in`: what still in flight is counted with
    the spent at its worst case (batch mode's batches)."""
    if held_in is not None:
        where = f"${spent + held:.4f} of ${limit:.4f} spent or in {held_in} (at their worst case)"
    else:
        counting = (
            f" (counting {unknown:,} requests of unknown cost at their worst case)"
            if unknown
            else ""
        )
        where = f"spent ${spent:.4f} of ${limit:.4f}{counting}"
    return BudgetReached(
        f"stopped at the budget: {where}, and the next request could cost up to "
        f"${worst:.4f}; run again with a higher --max-cost to continue"
    )


class LocalBudget:
    """A Budget kept in this process: a local run's, a batch run's, and the sums the Ray
    pool actor keeps for the cluster (ray/pool.py)."""

    def __init__(
        self,
        limit_usd: float | Decimal | str,
        spent_before_usd: float | Decimal | str,
        *,
        held_usd: Decimal = Decimal(0),
        held_in: str | None = None,
    ) -> None:
        """`held_usd`: reserved already (a batch run's batches from earlier runs); `held_in`:
        what is in flight are batches, settled only by this same run's later polls, so a
        request that does not fit is refused at once, never waited for."""
        self.limit = Decimal(str(limit_usd))
        self.spent = Decimal(str(spent_before_usd))
        self.reserved = held_usd
        self.unknown = 0  # requests counted at their worst case: their cost was not told
        self.held_in = held_in
        self.settles = 0  # settles so far: a reservation that does not fit waits for the next
        self._settled = asyncio.Event()

    async def reserve(self, worst: Decimal) -> None:
        """Wait until `worst` fits beside what is in flight; BudgetReached if it never will."""
        while not self.try_reserve(worst):
            await self.settled_after(self.settles)  # something in flight ends: its cost known

    def try_reserve(self, worst: Decimal) -> bool:
        """Reserve `worst` if it fits now (True); False while a settle may make room;
        BudgetReached when none will (nothing in flight, or batches only)."""
        if self.spent + self.reserved + worst <= self.limit:
            self.reserved += worst
            return True
        if self.reserved == 0 or self.held_in is not None:
            raise self.refusal(worst)
        return False

    def confirm(self, worst: Decimal) -> None:
        """`worst`, reserved already, is about to be sent: BudgetReached if what is spent and
        reserved crosses the limit now (a batch kept from a run with a higher --max-cost)."""
        if self.spent + self.reserved > self.limit:
            raise self.refusal(worst)

    async def settled_after(self, settles: int) -> None:
        """Return once there were more than `settles` settles (at once if there were)."""
        while self.settles <= settles:
            self._settled.clear()
            await self._settled.wait()

    def settle(self, worst: Decimal, actual_usd: float | None) -> None:
        """The request ended: `actual_usd` is what it cost, None when that is unknown."""
        self.reserved -= worst
        if actual_usd is None:
            self.spent += worst
            self.unknown += 1
        elif actual_usd:
            self.spent += Decimal(repr(actual_usd))
        self.settles += 1
        self._settled.set()

    def spend(self, usd: Decimal) -> None:
        """A cost no reservation of its own stands for: a batch's rows as they are collected
        (the batch's reservation is released whole once it is)."""
        self.spent += usd

    def refusal(self, worst: Decimal) -> BudgetReached:
        return refusal(
            self.spent, self.limit, worst, unknown=self.unknown, held=self.reserved,
            held_in=self.held_in,
        )  # fmt: skip


class Stake:
    """One row's worst case across its attempts, for the budget and the record of
    requests that may have been billed (store/unrecorded.py): an `AttemptWatch`.

    An attempt sent whole whose answer never came (dropped, silent) may have been billed:
    its worst case moves from reserved to spent for good, even if a later attempt is
    answered (the dropped one may still have been billed, and nothing will ever say it
    was not), and the next attempt needs a reservation of its own first."""

    def __init__(
        self,
        worst: Decimal,
        budget: Budget | None,
        book: Any,
        *,
        held: bool,
        nano: int | None = None,
    ) -> None:
        """`budget`: None when there is no limit; `book`: an Unrecorded or None; `held`:
        `worst` is reserved already; `nano`: `nano_usd(worst)`, when the caller has it."""
        self.worst, self.budget, self.book = worst, budget, book
        self.nano = nano_usd(worst) if nano is None else nano
        self.held = held
        self.in_flight = self.lost = False  # the last attempt's state

    def sending(self) -> None:
        self.in_flight, self.lost = True, False
        if self.book is not None:
            self.book.sending(self.nano)

    def ended(self, unseen: bool) -> None:
        self.in_flight, self.lost = False, unseen
        if self.book is not None:
            self.book.ended(self.nano, unseen)

    async def again(self) -> None:
        if self.budget is None or not self.held:
            return
        self.held = False
        self.budget.settle(self.worst, None)  # the lost attempt: spent at its worst case
        await self.budget.reserve(self.worst)  # BudgetReached: the row stays to do
        self.held = True

    def settle(self, actual_usd: float | None) -> None:
        """The row ended (`actual_usd` its record's cost, None: unknown or no record): an
        attempt lost or still in flight counts at its worst case."""
        if self.budget is None or not self.held:
            return
        self.held = False
        maybe_billed = self.in_flight or self.lost
        self.budget.settle(self.worst, None if maybe_billed else actual_usd)
