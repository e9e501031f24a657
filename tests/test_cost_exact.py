"""Cost columns add up exactly: thousands of rows with mixed token kinds, checked against an
independent computation from the published prices (API-NOTES), in Decimal."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from pipeline.job.model import ExtractSpec
from pipeline.labels.extract import Extractor
from pipeline.pricing import load_price_table
from pipeline.providers.base import Answer, Usage
from pipeline.run.outcome import RecordBuilder
from pipeline.send.client import CallResult

# USD per million tokens (input, output), written out again here on purpose
PUBLISHED = {
    "claude-opus-4-5": ("5", "25"), "claude-opus-4-1-20250805": ("15", "75"),
    "claude-sonnet-4-6": ("3", "15"), "claude-sonnet-4-5-20250929": ("3", "15"),
    "claude-haiku-4-5-20251001": ("1", "5"), "claude-3-5-haiku-20241022": ("0.80", "4"),
    "claude-3-haiku-20240307": ("0.25", "1.25"),
}  # fmt: skip
LONG_CONTEXT = {"claude-sonnet-4-5-20250929": ("6", "22.50")}


def independent_cost(model: str, usage: Usage) -> dict[str, Decimal]:
    total_input = (
        usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    )
    inp, out = PUBLISHED[model]
    if model in LONG_CONTEXT and total_input > 200_000:
        inp, out = LONG_CONTEXT[model]
    base, output = Decimal(inp), Decimal(out)
    half = Decimal("0.5") if usage.service_tier == "batch" else Decimal(1)
    million = Decimal(1_000_000)
    parts = {
        "input_cost_usd": usage.input_tokens * base,
        "output_cost_usd": usage.output_tokens * output,
        "cache_write_cost_usd": usage.cache_creation_5m_tokens * base * Decimal("1.25")
        + usage.cache_creation_1h_tokens * base * 2,
        "cache_read_cost_usd": usage.cache_read_input_tokens * base * Decimal("0.1"),
    }
    exact = {k: v * half / million for k, v in parts.items()}
    exact["cost_usd"] = sum(exact.values(), Decimal(0))
    return exact


def random_usage(rng: random.Random) -> Usage:
    five, hour = rng.choice([0, rng.randint(1, 50_000)]), rng.choice([0, rng.randint(1, 9_000)])
    big = rng.random() < 0.05  # a few long-context requests
    return Usage(
        input_tokens=rng.randint(0, 250_000 if big else 5_000),
        output_tokens=rng.randint(0, 8_000),
        cache_creation_input_tokens=five + hour,
        cache_read_input_tokens=rng.choice([0, rng.randint(1, 100_000)]),
        cache_creation_5m_tokens=five,
        cache_creation_1h_tokens=hour,
        service_tier=rng.choice(["standard", "standard", "batch", None]),
    )


def test_five_thousand_mixed_rows_cost_exactly_what_the_prices_say():
    rng = random.Random(42)
    builder = RecordBuilder(["id"], Extractor(ExtractSpec()), load_price_table())
    column_totals = dict.fromkeys(
        [
            "input_cost_usd",
            "output_cost_usd",
            "cache_write_cost_usd",
            "cache_read_cost_usd",
            "cost_usd",
        ],
        Decimal(0),
    )
    float_totals = dict.fromkeys(column_totals, 0.0)
    for i in range(5000):
        model = rng.choice(sorted(PUBLISHED))
        usage = random_usage(rng)
        answer = Answer("x", "[]", "end_turn", model, usage, [])
        record = builder.from_call(
            {"_row": i, "id": i}, model, CallResult(answer, 200, None, None, 1, "req", 1.0)
        )
        expected = independent_cost(model, usage)
        for column, exact in expected.items():
            assert record[column] == float(exact), (i, model, usage, column)
            column_totals[column] += exact
            float_totals[column] += record[column]
    for column, exact in column_totals.items():  # the columns' sums, as a report adds them
        assert float_totals[column] == pytest.approx(float(exact), rel=1e-12, abs=1e-12)
    parts = sum(column_totals[c] for c in column_totals if c != "cost_usd")
    assert parts == column_totals["cost_usd"]
