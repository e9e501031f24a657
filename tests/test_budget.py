"""The hard budget and the record of an answer that carried no usage: its cost is unknown,
so the record says null (never $0) and the budget counts the request at its worst case."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from pipeline.errors import BudgetReached
from pipeline.job.model import ExtractSpec
from pipeline.labels.extract import Extractor
from pipeline.pricing import load_price_table
from pipeline.providers.base import Answer, Usage
from pipeline.run.outcome import NO_USAGE_WARNING, RecordBuilder
from pipeline.schema import COST_COLUMNS, TOKEN_COLUMNS
from pipeline.send.budget import LocalBudget, refusal
from pipeline.send.client import CallResult

MODEL = "claude-haiku-4-5-20251001"
WORST = Decimal("0.0004")


def spend(budget: LocalBudget, actual: float | None) -> None:
    asyncio.run(budget.reserve(WORST))
    budget.settle(WORST, actual)


@pytest.mark.parametrize(
    ("actual", "spent"),
    [
        (0.0001, Decimal("0.0001")),  # what it cost
        (0.0, Decimal(0)),  # never answered: nothing paid
        (None, WORST),  # answered, cost unknown: its worst case
    ],
)
def test_a_settled_request_counts_what_it_cost_or_its_worst_case(actual, spent):
    budget = LocalBudget(1.0, 0.0)
    spend(budget, actual)
    assert (budget.spent, budget.reserved) == (spent, 0)


def test_answers_of_unknown_cost_stop_the_run_at_the_budget():
    budget = LocalBudget(0.001, 0.0)
    sent = 0
    with pytest.raises(BudgetReached, match="2 requests of unknown cost at their worst case"):
        for _ in range(300):
            spend(budget, None)
            sent += 1
    assert sent == 2 and budget.spent <= Decimal("0.001")  # 3 x $0.0004 would cross it


def record(builder: RecordBuilder, usage: Usage | None) -> dict:
    answer = Answer("positive", "[]", "end_turn", MODEL, usage, [])
    return builder.from_call(
        {"_row": 0, "id": 0}, MODEL, CallResult(answer, 200, None, None, 1, "r", 1.0)
    )


def test_an_answer_without_usage_is_ok_with_null_usage_and_null_cost(capsys):
    builder = RecordBuilder(["id"], Extractor(ExtractSpec()), load_price_table())
    for _ in range(3):
        row = record(builder, None)
        assert row["status"] == "ok" and row["response_text"] == "positive"
        assert all(row[c] is None for c in (*TOKEN_COLUMNS, *COST_COLUMNS))
    priced = record(builder, Usage(10, 2))
    assert priced["cost_usd"] > 0 and priced["input_tokens"] == 10
    assert capsys.readouterr().err.count(NO_USAGE_WARNING) == 1  # once a run, not a row


@pytest.mark.parametrize(
    ("spent", "reserved", "worst", "held_in", "answer"),
    [
        ("0", "0", "0.40", None, "reserved"),
        ("0.60", "0", "0.40", None, "reserved"),  # exactly the limit fits
        ("0.70", "0", "0.40", None, "refused"),  # nothing in flight: nothing makes room
        ("0.10", "0.50", "0.45", None, "wait"),  # a settle may make room
        ("0.10", "0.50", "0.45", "batches", "refused"),  # batches settle only later: at once
    ],
)
def test_try_reserve(spent, reserved, worst, held_in, answer) -> None:
    budget = LocalBudget(1.0, spent, held_usd=Decimal(reserved), held_in=held_in)
    try:
        got = "reserved" if budget.try_reserve(Decimal(worst)) else "wait"
    except BudgetReached:
        got = "refused"
    assert got == answer
    assert budget.reserved == Decimal(reserved) + (Decimal(worst) if got == "reserved" else 0)


@pytest.mark.parametrize(
    ("spent", "held", "held_in", "unknown", "text"),
    [
        ("0.9", "0", None, 0, "stopped at the budget: spent $0.9000 of $1.0000, and the next "
         "request could cost up to $0.4000; run again with a higher --max-cost to continue"),
        ("0.9", "0", None, 2, "stopped at the budget: spent $0.9000 of $1.0000 (counting 2 "
         "requests of unknown cost at their worst case), and the next request could cost up "
         "to $0.4000; run again with a higher --max-cost to continue"),
        ("0.5", "0.4", "batches", 0, "stopped at the budget: $0.9000 of $1.0000 spent or in "
         "batches (at their worst case), and the next request could cost up to $0.4000; run "
         "again with a higher --max-cost to continue"),
    ],
)  # fmt: skip
def test_every_refusal_is_worded_once(spent, held, held_in, unknown, text) -> None:
    got = refusal(
        Decimal(spent), Decimal(1), Decimal("0.4"), unknown=unknown, held=Decimal(held),
        held_in=held_in,
    )  # fmt: skip
    assert isinstance(got, BudgetReached) and str(got) == text


def test_a_reservation_waits_for_a_settle_not_for_time() -> None:
    budget = LocalBudget(1.0, 0.0)

    async def scenario() -> list[str]:
        await budget.reserve(Decimal("0.6"))
        waiting = asyncio.ensure_future(budget.reserve(Decimal("0.6")))
        for _ in range(10):
            await asyncio.sleep(0)
        said = [f"waiting {not waiting.done()}"]
        budget.settle(Decimal("0.6"), 0.1)
        await waiting
        return [*said, f"reserved {budget.reserved}"]

    assert asyncio.run(scenario()) == ["waiting True", "reserved 0.6"]


def test_confirm_refuses_what_is_reserved_once_the_limit_is_below_it() -> None:
    LocalBudget(1.0, "0.5", held_usd=Decimal("0.5")).confirm(Decimal("0.5"))  # within
    with pytest.raises(BudgetReached, match=r"\$1.2000 of \$1.0000 spent or in batches"):
        LocalBudget(1.0, "0.7", held_usd=Decimal("0.5"), held_in="batches").confirm(Decimal("0.5"))
