"""`pipeline report` totals are exact sums of the row values, in every format, with no float
noise; `saved_by_batch_usd` is what batch rows' tokens would have cost online minus what
they cost. Expected values come from the parquet (each float as `Decimal(repr(x))`) and from
the published prices written out here, never from the code under test."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from decimal import Context, Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from pipeline.pricing import costs, load_price_table
from pipeline.providers.base import Usage
from pipeline.reports.report import breakdown, report
from pipeline.reports.savings import batch_savings, exact_sum
from pipeline.schema import COST_COLUMNS, output_schema
from pipeline.store.layout import RESULTS_FILE

HAIKU, SONNET, OPUS = "claude-haiku-4-5-20251001", "claude-sonnet-4-6", "claude-opus-4-7"
LONG = "claude-sonnet-4-5-20250929"  # long context above 200,000 input tokens
UNPRICED = "gw-mystery"
MODELS = (HAIKU, SONNET, OPUS, LONG, UNPRICED)
# The published prices (USD per million tokens): (input, output); the long-context rate
PRICES = {HAIKU: (1, 5), SONNET: (3, 15), OPUS: (5, 25), LONG: (3, 15)}
LONG_PRICE, LONG_ABOVE = (6, Decimal("22.5")), 200_000
WRITE_5M, WRITE_1H, READ = Decimal("1.25"), Decimal(2), Decimal("0.1")
MILLION = Decimal(1_000_000)
TABLE = load_price_table()  # parsed once, not once a row (seconds for the 5,000 rows)
OURS = TABLE.version
MONEY = (*COST_COLUMNS, "saved_by_caching_usd", "saved_by_batch_usd")


def online_cost(model: str, tokens: tuple[int, int, int, int, int]) -> Decimal:
    """The online cost of (input, output, 5m writes, 1h writes, reads) at published prices."""
    inputs, outputs, five, hour, reads = tokens
    price_in, price_out = map(Decimal, PRICES[model])
    if model == LONG and inputs + five + hour + reads > LONG_ABOVE:
        price_in, price_out = map(Decimal, LONG_PRICE)
    parts = (
        inputs * price_in,
        outputs * price_out,
        five * WRITE_5M * price_in,
        hour * WRITE_1H * price_in,
        reads * READ * price_in,
    )
    return sum(parts, Decimal(0)) / MILLION


def row(
    ident: str,
    model: str,
    tokens: tuple[int, int, int, int, int] | None,
    batch_id: str | None = None,
    version: str = OURS,
) -> dict[str, Any]:
    """An answered row as the pipeline writes it (costs by `pricing.costs`); `tokens` None:
    answered without usage (null usage and costs)."""
    base = {"id": ident, "status": "ok", "model": model, "batch_id": batch_id,
            "attempts": 1, "price_table_version": version}  # fmt: skip
    if tokens is None:
        return base
    inputs, outputs, five, hour, reads = tokens
    usage = Usage(
        input_tokens=inputs, output_tokens=outputs, cache_creation_input_tokens=five + hour,
        cache_read_input_tokens=reads, cache_creation_5m_tokens=five,
        cache_creation_1h_tokens=hour, service_tier="batch" if batch_id else None,
    )  # fmt: skip
    price = TABLE.lookup(model) if model != UNPRICED else None
    counts = {
        name: getattr(usage, name)
        for name in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                     "cache_read_input_tokens", "cache_creation_5m_tokens",
                     "cache_creation_1h_tokens")
    }  # fmt: skip
    return {**base, **counts, **(costs(price, usage) if price else {})}


def error_row(ident: str) -> dict[str, Any]:
    """Never answered: no usage, zero cost."""
    zero = dict.fromkeys(COST_COLUMNS, 0.0)
    return {"id": ident, "status": "error", "error_type": "overloaded_error",
            "attempts": 3, "price_table_version": OURS, **zero}  # fmt: skip


def write_results(directory: Path, rows: list[dict[str, Any]]) -> Path:
    schema = output_schema([pa.field("id", pa.string())], [])
    directory.mkdir(parents=True, exist_ok=True)
    pl.from_arrow(pa.Table.from_pylist(rows, schema=schema)).write_parquet(directory / RESULTS_FILE)
    return directory


def mixed_rows(count: int = 5000, seed: int = 15) -> list[dict[str, Any]]:
    """Every token kind, batch rows, five models (one unpriced), long-context requests,
    rows without usage, error rows and rows priced by another table."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        if i % 97 == 0:
            rows.append(error_row(f"e{i}"))
            continue
        model = MODELS[i % len(MODELS)]
        tokens = (
            rng.randint(1, 3000), rng.randint(1, 800),
            rng.choice((0, 0, 0, rng.randint(1024, 9000))),
            rng.choice((0, 0, 0, 0, rng.randint(1024, 9000))),
            rng.choice((0, 0, rng.randint(1, 9000), 250_000 if model == LONG else 5000)),
        )  # fmt: skip
        batch = f"msgbatch_{i % 7}" if i % 3 == 0 else None
        version = "anthropic-2025-01-01" if i % 11 == 0 else OURS  # same prices, older table
        rows.append(row(f"r{i}", model, None if i % 89 == 0 else tokens, batch, version))
    return rows


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_results(tmp_path_factory.mktemp("totals") / "out", mixed_rows())


def row_sums(out: Path) -> dict[str | None, dict[str, Decimal | None]]:
    """Per model and for TOTAL ("TOTAL"): each cost column's sum of Decimal(repr(x)); None
    for a group with no priced row (a missing price is never a silent 0)."""
    frame = pl.read_parquet(out / RESULTS_FILE)
    sums: dict[str | None, dict[str, Decimal | None]] = {}
    for record in frame.iter_rows(named=True):
        for key in (record["model"], "TOTAL"):
            group = sums.setdefault(key, dict.fromkeys(COST_COLUMNS, None))
            for c in COST_COLUMNS:
                if record[c] is not None:
                    group[c] = (group[c] or Decimal(0)) + Decimal(repr(record[c]))
    return sums


def test_json_totals_are_the_exact_sums_of_the_row_costs(mixed):
    text = report(mixed, ("model",), "json")
    shown = {r["model"]: r for r in json.loads(text, parse_float=Decimal)}
    expected = row_sums(mixed)
    assert set(shown) == set(expected)
    for model, sums in expected.items():
        for column, value in sums.items():
            assert shown[model][column] == value, (model, column)
    frame = pl.read_parquet(mixed / RESULTS_FILE)
    floats = sum(v for v in frame["cost_usd"].to_list() if v is not None)
    assert Decimal(repr(floats)) != expected["TOTAL"]["cost_usd"]  # the old float sum differs
    assert not re.search(r"\d[eE][-+]?\d", text)  # no exponent: every digit written out
    total = expected["TOTAL"]["cost_usd"]
    assert f'"cost_usd": {format(total.normalize(), "f")},' in text  # the exact digits


def test_csv_and_markdown_totals_are_the_exact_digits(mixed):
    expected = row_sums(mixed)
    records = {r["model"]: r for r in csv.DictReader(io.StringIO(report(mixed, ("model",), "csv")))}
    lines = report(mixed, ("model",), "markdown").splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = {
        values[0]: dict(zip(header, values, strict=True))
        for values in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
    }
    for model, sums in expected.items():
        key = model or ""
        for column, value in sums.items():
            digits = "" if value is None else format(value.normalize(), "f")
            assert records[key][column] == digits, (model, column)
            assert cells[key][column] == digits, (model, column)


def test_mean_is_the_exact_sum_over_the_count_and_percentiles_are_row_costs(mixed):
    shown = json.loads(report(mixed, ("model",), "json"), parse_float=Decimal)[-1]
    frame = pl.read_parquet(mixed / RESULTS_FILE).filter(pl.col("status") == "ok")
    answered = [Decimal(repr(v)) for v in frame["cost_usd"].to_list() if v is not None]
    assert shown["mean_cost_usd"] == Context(prec=12).divide(sum(answered), len(answered))
    ordered = sorted(answered)  # nearest rank, half up (polars): one row's own cost
    assert shown["p50_cost_usd"] == ordered[int((len(ordered) - 1) * 0.5 + 0.5)]
    assert shown["p95_cost_usd"] == ordered[int((len(ordered) - 1) * 0.95 + 0.5)]


def test_projected_cost_of_rows_not_done_is_exact(tmp_path):
    rows = [row("a", HAIKU, (1000, 100, 0, 0, 0)), row("b", HAIKU, (2000, 100, 0, 0, 0))]
    table = breakdown(pl.read_parquet(write_results(tmp_path, rows) / RESULTS_FILE), ["model"], 3)
    # mean (0.0015 + 0.0025) / 2 = 0.002 a row, x 3 rows
    assert table["mean_cost_usd"][-1] == Decimal("0.002")
    assert table["projected_cost_usd_not_done"][-1] == Decimal("0.006")


def test_batch_saving_total_is_what_the_batch_rows_cost_online_minus_what_they_cost(mixed):
    shown = {
        r["model"]: r["saved_by_batch_usd"]
        for r in json.loads(report(mixed, ("model",), "json"), parse_float=Decimal)
    }
    expected: dict[str | None, Decimal] = {}
    for record in mixed_rows():
        if record.get("batch_id") and record["model"] in PRICES and "input_tokens" in record:
            tokens = tuple(record[c] for c in ("input_tokens", "output_tokens",
                           "cache_creation_5m_tokens", "cache_creation_1h_tokens",
                           "cache_read_input_tokens"))  # fmt: skip
            online = online_cost(record["model"], tokens)  # type: ignore[arg-type]
            saved = online - Decimal(repr(record["cost_usd"]))
            expected[record["model"]] = expected.get(record["model"], Decimal(0)) + saved
    expected["TOTAL"] = sum(expected.values(), Decimal(0))
    assert {m: shown[m] for m in expected} == expected
    assert shown[UNPRICED] is None and shown[None] is None  # no price; no batch rows


def test_terminal_table_shows_the_exact_totals_never_rounded(mixed):
    text = report(mixed, ("model",), "table")
    cost = text.split("Cost (USD) by model")[1].split("\n\n")[0]
    total_line = next(line for line in cost.splitlines() if line.startswith("TOTAL"))
    expected = row_sums(mixed)["TOTAL"]["cost_usd"]
    places = max(6, -int(expected.normalize().as_tuple().exponent))
    assert f"{expected:,.{places}f}" in total_line.split()
    assert "saved by batch" in cost


def test_a_column_without_batch_rows_is_null_and_the_mean_is_shown_exactly(tmp_path):
    out = write_results(
        tmp_path, [row("a", HAIKU, (25, 3, 0, 0, 0)), row("b", HAIKU, (60, 5, 0, 0, 0))]
    )
    parsed = json.loads(report(out, ("id",), "json"), parse_float=Decimal)
    assert [r["saved_by_batch_usd"] for r in parsed] == [None, None, None]
    assert parsed[-1]["cost_usd"] == Decimal("0.000125")  # 0.00004 + 0.000085, not 0.000125000...01
    # 0.0000625 a row on average: all its digits, not rounded to six decimals
    assert "0.0000625" in report(out, ("id",), "table").split("TOTAL")[-1].split()


BATCH_CASES = [
    # (model, batch_id, (input, output, 5m, 1h, reads), price table, cost override) -> saving
    (HAIKU, "b1", (1000, 100, 0, 0, 0), OURS, None, Decimal("0.00075")),  # (1000 + 500) / 2M
    (HAIKU, None, (1000, 100, 0, 0, 0), OURS, None, None),  # online: not a batch row
    (SONNET, "b1", (0, 0, 1000, 1000, 10_000), OURS, None, Decimal("0.006375")),
    (LONG, "b1", (1000, 10, 0, 0, 250_000), OURS, None, Decimal("0.0781125")),  # long rate
    (OPUS, "b1", (0, 0, 0, 0, 0), OURS, None, Decimal(0)),  # no tokens: nothing saved
    (UNPRICED, "b1", (1000, 100, 0, 0, 0), OURS, None, None),  # no price
    (HAIKU, "b1", None, OURS, None, None),  # answered without usage: unknown
    (HAIKU, "b1", (1000, 100, 0, 0, 0), "anthropic-2025-01-01", None, Decimal("0.00075")),
    (HAIKU, "b1", (1000, 100, 0, 0, 0), "anthropic-2025-11-24+job-1", 0.5, None),  # not ours
]


@pytest.mark.parametrize(
    ("model", "batch_id", "tokens", "version", "cost", "expected"), BATCH_CASES
)
def test_batch_savings_per_row(model, batch_id, tokens, version, cost, expected):
    record = row("x", model, tokens, batch_id, version)
    if cost is not None:
        record["cost_usd"] = record["input_cost_usd"] = cost  # a job's own [pricing]
    schema = output_schema([pa.field("id", pa.string())], [])
    frame = pl.from_arrow(pa.Table.from_pylist([record], schema=schema))
    assert isinstance(frame, pl.DataFrame)
    saved = batch_savings(frame)
    assert saved.name == "saved_by_batch_usd" and saved.to_list() == [expected]


def test_batch_savings_keeps_row_order_and_service_tier_counts_as_batch():
    frame = pl.DataFrame(
        {
            "model": [HAIKU, HAIKU, HAIKU], "batch_id": [None, "b", None],
            "service_tier": [None, None, "batch"], "price_table_version": [OURS] * 3,
            "input_tokens": [2000, 1000, 4000], "output_tokens": [0, 0, 0],
            "cost_usd": [0.002, 0.0005, 0.002],
        }
    )  # fmt: skip
    assert batch_savings(frame).to_list() == [None, Decimal("0.0005"), Decimal("0.002")]


def test_exact_sum():
    assert exact_sum(pl.Series([0.1, 0.2, None])) == Decimal("0.3")  # floats: 0.30000000000000004
    assert exact_sum(pl.Series([None, None], dtype=pl.Float64)) is None
    decimals = pl.Series([Decimal("0.0000425"), Decimal("1")], dtype=pl.Decimal(38, 7))
    assert exact_sum(decimals) == Decimal("1.0000425")
    assert exact_sum(pl.Series([1e-05] * 3)) == Decimal("0.00003")
