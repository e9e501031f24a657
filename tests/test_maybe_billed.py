"""Attempts that may have been billed with no answer seen: which ones the client counts,
how the budget keeps them, and the memory-mapped book that outlives a kill."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from pipeline.errors import BudgetReached
from pipeline.send.budget import LocalBudget, Stake
from pipeline.store.unrecorded import MaybeBilled, Unrecorded, left_by_dead_run, notes
from tests.test_client import OK_BODY, Script, make_client

WORST = Decimal("0.0004")


class Watch:
    def __init__(self) -> None:
        self.events: list[str] = []

    def sending(self) -> None:
        self.events.append("sent")

    def ended(self, unseen: bool) -> None:
        self.events.append("unseen" if unseen else "seen")

    async def again(self) -> None:
        self.events.append("again")


@pytest.mark.parametrize(
    ("failure", "unseen"),
    [
        (httpx.RemoteProtocolError("server disconnected"), True),  # dropped after sending
        (httpx.ReadTimeout("silent"), True),
        (httpx.Response(200, text="<html>not an answer</html>"), True),  # a 2xx is billed
        (httpx.ConnectError("refused"), False),  # never left: never billed
        (httpx.ConnectTimeout("no route"), False),
        (httpx.Response(500, json={"type": "error", "error": {"type": "api_error"}}), False),
    ],
)
def test_an_attempt_is_maybe_billed_only_when_it_may_have_reached_the_server(failure, unseen):
    client, _ = make_client(Script(failure, httpx.Response(200, json=OK_BODY)))
    watch = Watch()
    result = asyncio.run(client.call(b"{}", watch=watch))
    assert result.answer is not None and result.unseen == int(unseen)
    first = "unseen" if unseen else "seen"
    assert watch.events == ["sent", first, *(["again"] if unseen else []), "sent", "seen"]


def lost_then_answered(budget: LocalBudget, book: Unrecorded | None = None) -> Stake:
    asyncio.run(budget.reserve(WORST))
    stake = Stake(WORST, budget, book, held=True)
    stake.sending()
    stake.ended(True)  # dropped after the request went: maybe billed
    asyncio.run(stake.again())
    stake.sending()
    stake.ended(False)
    stake.settle(0.0001)
    return stake


def test_a_dropped_attempt_stays_spent_at_its_worst_case_after_the_row_is_answered():
    budget = LocalBudget(1.0, 0.0)
    lost_then_answered(budget)
    assert (budget.spent, budget.reserved) == (WORST + Decimal("0.0001"), 0)


def test_the_attempt_after_a_dropped_one_asks_the_budget_again():
    budget = LocalBudget(0.0005, 0.0)  # room for one worst case, not two
    asyncio.run(budget.reserve(WORST))
    stake = Stake(WORST, budget, None, held=True)
    stake.sending()
    stake.ended(True)
    with pytest.raises(BudgetReached):
        asyncio.run(stake.again())
    stake.settle(None)  # nothing held any more: nothing settled twice
    assert (budget.spent, budget.reserved) == (WORST, 0)


def test_a_dropped_last_attempt_counts_at_its_worst_case():
    budget = LocalBudget(1.0, 0.0)
    asyncio.run(budget.reserve(WORST))
    stake = Stake(WORST, budget, None, held=True)
    stake.sending()
    stake.ended(True)
    stake.settle(0.0)  # an error row: $0 recorded, yet the dropped request may be billed
    assert budget.spent == WORST


def test_the_book_outlives_its_run_and_is_carried_on(tmp_path: Path):
    book = Unrecorded(tmp_path)
    lost_then_answered(LocalBudget(1.0, 0.0), book)
    book.sending(2_000)  # in flight when the process dies: the book is not discarded
    book.close()
    left = left_by_dead_run(tmp_path)
    assert left == MaybeBilled(1, 0.0004, 1, 2e-6, 0.0)
    assert any("1 requests were in flight and unrecorded when the run stopped" in n
               for n in notes(tmp_path))  # fmt: skip
    carried = Unrecorded(tmp_path, left)  # the next run: starts from what it left
    assert carried.counts() == left
    carried.discard()
    assert left_by_dead_run(tmp_path) is None
