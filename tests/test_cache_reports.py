"""What caching saved (`pipeline report`, every format and the HTML page) and what it would
save (`pipeline estimate`), against sums written out here from the published prices."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from pipeline.job.load import load_job
from pipeline.pricing import costs, load_price_table
from pipeline.providers.base import Usage
from pipeline.reports.estimate import estimate
from pipeline.reports.html_report import write_html
from pipeline.reports.report import report
from pipeline.schema import output_schema
from pipeline.store.layout import RESULTS_FILE
from tests.e2e import label_job

HAIKU, SONNET = "claude-haiku-4-5-20251001", "claude-sonnet-4-6"
UNPRICED = "gw-<b>mystery</b>"  # not in the table; its name also tests the page's escaping
# The published prices (API-NOTES "Prices"), USD per million tokens, written out here.
INPUT = {HAIKU: Decimal(1), SONNET: Decimal(3)}
WRITE_5M, WRITE_1H, READ, BATCH = Decimal("1.25"), Decimal(2), Decimal("0.1"), Decimal("0.5")
MILLION = Decimal(1_000_000)

# (id, model, batch_id, input, output, 5m writes, 1h writes, reads), then an error row
ROWS = [
    ("h1", HAIKU, None, 100, 10, 5000, 0, 0),  # the first row writes the prefix
    ("h2", HAIKU, None, 120, 10, 0, 0, 5000),
    ("h3", HAIKU, None, 90, 10, 0, 0, 5000),
    ("h4", HAIKU, "msgbatch_01", 80, 10, 0, 0, 1234),  # batch: half of it
    ("s1", SONNET, None, 50, 20, 0, 2000, 0),  # a 1-hour write
    ("s2", SONNET, None, 50, 20, 300, 0, 2000),  # reads and a 5-minute write
    ("s3", SONNET, "msgbatch_02", 50, 20, 0, 0, 2000),
    ("u1", UNPRICED, None, 40, 10, 0, 0, 3000),  # no price: no saving, not counted
]


def expected_saving(model: str, batch_id: str | None, w5: int, w1: int, reads: int) -> Decimal:
    price = INPUT[model]
    saved = reads * (price - READ * price) - (
        w5 * (WRITE_5M * price - price) + w1 * (WRITE_1H * price - price)
    )
    return saved * (BATCH if batch_id else 1) / MILLION


def result_row(
    ident: str,
    model: str | None,
    batch_id: str | None,
    tokens: tuple[int, int, int, int, int],
    version: str,
) -> dict[str, Any]:
    input_tokens, output_tokens, w5, w1, reads = tokens
    usage = Usage(
        input_tokens=input_tokens, output_tokens=output_tokens,
        cache_creation_input_tokens=w5 + w1, cache_read_input_tokens=reads,
        cache_creation_5m_tokens=w5, cache_creation_1h_tokens=w1,
        service_tier="batch" if batch_id else None,
    )  # fmt: skip
    price = load_price_table().lookup(model) if model != UNPRICED else None
    return {
        "id": ident, "status": "ok", "response_text": "positive", "model": model,
        **{name: getattr(usage, name) for name in (
            "input_tokens", "output_tokens", "cache_creation_input_tokens",
            "cache_read_input_tokens", "cache_creation_5m_tokens", "cache_creation_1h_tokens",
        )},
        **(costs(price, usage) if price else {}),
        "attempts": 1, "batch_id": batch_id, "latency_ms": 200.0 + len(ident),
        "finished_at": datetime(2026, 1, 1, 12, 0, len(ident) * 7 % 60, tzinfo=UTC),
        "price_table_version": version,
    }  # fmt: skip


def write_results(directory: Path, rows: list[dict[str, Any]]) -> Path:
    schema = output_schema([pa.field("id", pa.string())], [])
    table = pa.Table.from_pylist(rows, schema=schema)
    directory.mkdir(parents=True, exist_ok=True)
    pl.from_arrow(table).write_parquet(directory / RESULTS_FILE)
    return directory


@pytest.fixture
def output(tmp_path: Path) -> Path:
    version = load_price_table().version
    rows = [result_row(i, m, b, (n, o, w5, w1, r), version) for i, m, b, n, o, w5, w1, r in ROWS]
    error = {  # never answered: no usage, nothing paid
        "id": "e1", "status": "error", "error_type": "overloaded_error", "attempts": 9,
        "input_cost_usd": 0.0, "output_cost_usd": 0.0, "cache_write_cost_usd": 0.0,
        "cache_read_cost_usd": 0.0, "cost_usd": 0.0, "price_table_version": version,
    }  # fmt: skip
    return write_results(tmp_path / "out", [*rows, error])


def expected_by_model() -> dict[str | None, Decimal | None]:
    sums: dict[str | None, Decimal | None] = {HAIKU: Decimal(0), SONNET: Decimal(0)}
    for _, model, batch_id, _, _, w5, w1, reads in ROWS:
        if model in INPUT:
            sums[model] = (sums[model] or Decimal(0)) + expected_saving(
                model, batch_id, w5, w1, reads
            )
    sums[UNPRICED] = None  # its only row has no price
    sums[None] = Decimal(0)  # the error row: nothing paid, nothing saved
    return sums


def test_saved_by_caching_per_model_and_total_is_exact_in_json(output):
    expected = expected_by_model()
    total = sum(v for v in expected.values() if v is not None)
    assert expected[HAIKU] == Decimal("0.0083053") and total == Decimal("0.0101803")  # by hand
    text = report(output, ("model",), "json")
    parsed = json.loads(text, parse_float=Decimal)
    shown = {row["model"]: row["saved_by_caching_usd"] for row in parsed}
    assert shown == {**expected, "TOTAL": total}
    # the exact digits, never through a float: 0.0045 + 0.0045 + ... printed as they are
    assert '"saved_by_caching_usd": 0.0101803,' in text
    assert '"saved_by_caching_usd": 0.0083053,' in text
    assert '"saved_by_caching_usd": null,' in text  # the unpriced model's group
    assert all(json.loads(text)[i]["cost_usd"] is not None for i in (0, 1))  # still JSON


def test_saved_by_caching_in_csv_and_markdown_without_float_noise(output):
    rows = list(csv.DictReader(io.StringIO(report(output, ("model",), "csv"))))
    by_model = {row["model"]: row["saved_by_caching_usd"] for row in rows}
    assert by_model[HAIKU] == "0.0083053" and by_model[SONNET] == "0.001875"
    assert by_model["TOTAL"] == "0.0101803" and by_model[UNPRICED] == ""
    markdown = report(output, ("model",), "markdown")
    header = markdown.splitlines()[0].split(" | ")
    total = next(line for line in markdown.splitlines() if line.startswith("| TOTAL |"))
    assert total.split(" | ")[header.index("saved_by_caching_usd")] == "0.0101803"


def test_saving_per_row_can_be_negative_and_batch_rows_save_half(output):
    parsed = json.loads(report(output, ("id",), "json"), parse_float=Decimal)
    shown = {row["id"]: row["saved_by_caching_usd"] for row in parsed}
    assert shown["h1"] == Decimal("-0.00125")  # a 5m write of 5,000 Haiku tokens, never read
    assert shown["s1"] == Decimal("-0.006")  # a 1h write of 2,000 Sonnet tokens: 2,000 x $3
    assert shown["h4"] == Decimal("0.0005553")  # 1,234 x $0.9 / 2 (batch)
    assert shown["s3"] == Decimal("0.0027")  # 2,000 x $2.7 / 2 (batch)
    assert shown["s2"] == Decimal("0.005175")  # 2,000 x $2.7 - 300 x $0.75
    assert shown["u1"] is None and shown["e1"] == 0


def test_terminal_table_has_the_column_and_notes_the_rows_left_out(output):
    text = report(output, ("model",))
    cost = text.split("Cost (USD) by model")[1].split("Cost a row")[0]
    header, _, *lines = cost.strip("\n").splitlines()
    assert "saved by caching" in header
    total = next(line for line in lines if line.startswith("TOTAL"))
    assert "0.0101803" in total.split()  # its exact digits: never rounded to six decimals
    haiku = next(line for line in lines if line.startswith(HAIKU))
    assert "0.0083053" in haiku.split()
    assert "saved by caching leaves out 1 row(s) with cache tokens" in text


def test_cache_hit_share_is_a_percentage_for_people_and_the_ratio_for_machines(output, tmp_path):
    # reads over input, writes and reads: 18,234 / (580 + 7,300 + 18,234); Haiku's
    # 11,234 / (390 + 5,000 + 11,234)
    total, haiku = Decimal(18_234) / 26_114, Decimal(11_234) / 16_624
    lines = report(output, ("model",)).split("cache hits by model\n")[1].splitlines()
    assert lines[0].endswith("cache hit share")
    assert next(line for line in lines if line.startswith("TOTAL")).endswith(" 69.8%")
    assert next(line for line in lines if line.startswith(HAIKU)).endswith(" 67.6%")
    parsed = json.loads(report(output, ("model",), "json"), parse_float=Decimal)
    assert abs(parsed[-1]["cache_hit_share"] - total) < Decimal("1e-15")  # the ratio
    rows = list(csv.DictReader(io.StringIO(report(output, ("model",), "csv"))))
    assert abs(Decimal(rows[0]["cache_hit_share"]) - haiku) < Decimal("1e-15")
    page = tmp_path / "report.html"
    write_html(pl.read_parquet(output / RESULTS_FILE), ["model"], page, "out")
    assert "<td>69.8%</td></tr></tbody>" in page.read_text()  # the TOTAL row's last cell


def test_html_page_shows_the_saving_and_escapes_the_data(output, tmp_path):
    results = pl.read_parquet(output / RESULTS_FILE)
    page = tmp_path / "report.html"
    write_html(results, ["model"], page, "out <run>")
    text = page.read_text()
    assert '<span class="saved">saved by caching: $0.0101803</span>' in text
    assert "<th>saved by caching</th>" in text and "<td>0.0101803</td>" in text
    assert "gw-&lt;b&gt;mystery&lt;/b&gt;" in text and "<b>mystery" not in text
    assert "<title>out &lt;run&gt;</title>" in text


def test_a_row_priced_by_another_table_counts_only_when_its_costs_agree(tmp_path):
    tokens = (100, 10, 0, 0, 5000)
    agreeing = result_row("old", HAIKU, None, tokens, "anthropic-2025-01-01")  # same prices
    other = result_row("job", HAIKU, None, tokens, "anthropic-2025-11-24+job-1a2b3c4d")
    other["cost_usd"] = other["input_cost_usd"] = 0.5  # a job's own [pricing]: not ours
    out = write_results(tmp_path / "out", [agreeing, other])
    parsed = json.loads(report(out, ("id",), "json"), parse_float=Decimal)
    shown = {row["id"]: row["saved_by_caching_usd"] for row in parsed}
    assert shown == {"old": Decimal("0.0045"), "job": None, "TOTAL": Decimal("0.0045")}


def test_long_context_rows_save_at_the_long_context_price(tmp_path):
    version = load_price_table().version
    row = result_row("big", "claude-sonnet-4-5-20250929", None, (1000, 10, 0, 0, 250_000), version)
    out = write_results(tmp_path / "out", [row])
    parsed = json.loads(report(out, ("id",), "json"), parse_float=Decimal)
    # above 200K input tokens every token is at $6 (reads $0.60): 250,000 x $5.40
    assert parsed[0]["saved_by_caching_usd"] == Decimal("1.35")


# --- estimate ----------------------------------------------------------------------------

GUIDE = "Label the review's overall opinion of the product. " * 400  # 20,400 bytes: 5,100 tokens


def money(text: str, label: str) -> list[Decimal]:
    line = next(x for x in text.splitlines() if x.startswith(label))
    return [Decimal(v.replace(",", "")) for v in re.findall(r"\$([\d,.]+\d)", line)]


def guide_job(tmp_path: Path, system: str, rows: int = 40, **sections: dict[str, Any]) -> Any:
    texts = [f"review {i}: " + "fine " * (i % 5) for i in range(rows)]
    pl.DataFrame({"id": [f"r{i}" for i in range(rows)], "text": texts}).write_csv(
        tmp_path / "in.csv"
    )
    request = {"system": system, **sections.pop("request", {})}
    return load_job(label_job(tmp_path, tmp_path / "in.csv", request=request, **sections))


def prefix_tokens() -> int:
    return -(-len(GUIDE.encode()) // 4)  # about 4 bytes a token, rounded up


def test_estimate_with_auto_shows_the_cached_cost_and_the_break_even(tmp_path):
    job = guide_job(tmp_path, GUIDE, request={"cache": "auto"})
    text = estimate(job, pilot=0, simulate=False, base_url=None)
    tokens = prefix_tokens()
    assert tokens > 4096
    assert (
        f"cache          shared prefix ~{tokens:,} tokens (system) of {HAIKU} marked for "
        "caching, ttl 5m" in text
    )
    low, high = money(text, "cost online")
    cached_low, cached_high = money(text, "cost cached")
    assert cached_low < low and cached_high < high
    # one 5m write and 39 reads instead of 40 full-price inputs of the prefix, Haiku $1
    saved = tokens * (40 * INPUT[HAIKU] - WRITE_5M - 39 * READ) / MILLION
    assert abs((low - cached_low) - saved) <= Decimal("0.0001")  # printed to 4 decimals
    assert abs((high - cached_high) - saved) <= Decimal("0.0001")
    assert (
        "break-even     a 5m write costs 1.25x input, a 1h write 2x; each read 0.1x: "
        "caching pays from the 2nd row (5m) / 3rd row (1h)\n" in text
    )
    lines = text.splitlines()
    assert lines.index(next(x for x in lines if x.startswith("cost cached"))) > lines.index(
        next(x for x in lines if x.startswith("cost online"))
    )


def test_estimate_with_auto_and_a_slow_rate_uses_the_1h_write(tmp_path):
    job = guide_job(tmp_path, GUIDE, request={"cache": "auto"}, limits={"requests_per_minute": 0.1})
    text = estimate(job, pilot=0, simulate=False, base_url=None)
    assert "ttl 1h" in text
    low, _ = money(text, "cost online")
    cached_low, _ = money(text, "cost cached")
    saved = prefix_tokens() * (40 * INPUT[HAIKU] - WRITE_1H - 39 * READ) / MILLION
    assert abs((low - cached_low) - saved) <= Decimal("0.0001")


def test_break_even_follows_the_prices(tmp_path):
    job = guide_job(
        tmp_path,
        GUIDE,
        request={"cache": "auto"},
        pricing={HAIKU: {"input": 1, "output": 5, "cache_write_5m": 3, "cache_read": 0.5}},
    )
    text = estimate(job, pilot=0, simulate=False, base_url=None)
    # 3 + 0.5 (n - 1) < n from n = 6; 2 + 0.5 (n - 1) < n from n = 4
    assert (
        "break-even     a 5m write costs 3x input, a 1h write 2x; each read 0.5x: "
        "caching pays from the 6th row (5m) / 4th row (1h)" in text
    )


def test_estimate_with_auto_and_a_short_prefix_says_it_is_below_the_minimum(tmp_path):
    job = guide_job(tmp_path, "You label reviews.", request={"cache": "auto"})
    text = estimate(job, pilot=0, simulate=False, base_url=None)
    line = next(x for x in text.splitlines() if x.startswith("cache "))
    assert "below the 4,096 that claude-haiku-4-5-20251001 caches" in line
    assert "cost cached" not in text


def test_estimate_without_auto_says_what_auto_would_save(tmp_path):
    job = guide_job(tmp_path, GUIDE)
    text = estimate(job, pilot=0, simulate=False, base_url=None)
    line = next(x for x in text.splitlines() if x.startswith("cache "))
    assert f'cache = "auto" would cache ~{prefix_tokens():,} tokens: cost $' in line
    cached_low, cached_high, low, high = money(text, "cache ")
    assert [low, high] == money(text, "cost online")
    assert cached_low < low and cached_high < high
    assert "cost cached" not in text and "break-even" not in text
    short = guide_job(tmp_path, "You label reviews.")
    lines = estimate(short, pilot=0, simulate=False, base_url=None).splitlines()
    assert not [x for x in lines if x.startswith("cache ")]  # nothing to cache: no hint
