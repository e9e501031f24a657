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
from pipeline.send.budget import Budget
from pipeline.send.client import CallResult

MODEL = "claude-haiku-4-5-20251001"
WORST = Decimal("0.0004")


def spend(budget: Budget, actual: float | None) -> None:
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
    budget = Budget(1.0, 0.0)
    spend(budget, actual)
    assert (budget.spent, budget.reserved) == (spent, 0)


def test_answers_of_unknown_cost_stop_the_run_at_the_budget():
    budget = Budget(0.001, 0.0)
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
