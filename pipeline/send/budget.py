"""The hard budget: a request is sent only while spent + the worst case of everything in
flight stays within max_cost_usd.

The worst case of a request is its input priced at the highest input rate it could be
billed at, plus max_tokens at the output price. Input tokens are bounded by UTF-8 bytes / 2,
well above what the local estimate (bytes / 4) or a real tokenizer counts for any text.
A request whose cost stays unknown (an answer without usage, or one that ended without a
record) is counted at that worst case: the limit holds whatever the server reports.
"""

from __future__ import annotations

import asyncio
from decimal import ROUND_CEILING, Decimal
from typing import Any

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


class Budget:
    def __init__(self, limit_usd: float, spent_before_usd: float) -> None:
        self.limit = Decimal(str(limit_usd))
        self.spent = Decimal(str(spent_before_usd))
        self.reserved = Decimal(0)
        self.unknown = 0  # requests counted at their worst case: their cost was not told
        self._settled = asyncio.Event()

    async def reserve(self, worst: Decimal) -> None:
        """Wait until `worst` fits beside what is in flight; BudgetReached if it never will."""
        while self.spent + self.reserved + worst > self.limit:
            if self.reserved == 0:
                unknown = (
                    f" (counting {self.unknown:,} requests of unknown cost at their worst case)"
                    if self.unknown
                    else ""
                )
                raise BudgetReached(
                    f"stopped at the budget: spent ${self.spent:.4f} of ${self.limit:.4f}"
                    f"{unknown}, and the next request could cost up to ${worst:.4f}; run "
                    "again with a higher --max-cost to continue"
                )
            self._settled.clear()
            await self._settled.wait()  # something in flight ends: its actual cost is known
        self.reserved += worst

    def settle(self, worst: Decimal, actual_usd: float | None) -> None:
        """The request ended: `actual_usd` is what it cost, None when that is unknown."""
        self.reserved -= worst
        if actual_usd is None:
            self.spent += worst
            self.unknown += 1
        elif actual_usd:
            self.spent += Decimal(repr(actual_usd))
        self._settled.set()


class Stake:
    """One row's worst case across its attempts, for the budget and the record of
    requests that may have been billed (store/unrecorded.py): an `AttemptWatch`.

    An attempt sent whole whose answer never came (dropped, silent) may have been billed:
    its worst case moves from reserved to spent for good, even if a later attempt is
    answered (the dropped one may still have been billed, and nothing will ever say it
    was not), and the next attempt needs a reservation of its own first."""

    def __init__(self, worst: Decimal, budget: Any, book: Any, *, held: bool) -> None:
        """`budget`: a Budget or anything with its reserve / settle (None: no limit);
        `book`: an Unrecorded or None; `held`: `worst` is reserved already."""
        self.worst, self.budget, self.book = worst, budget, book
        self.nano = int((worst * 1_000_000_000).to_integral_value(ROUND_CEILING))
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
