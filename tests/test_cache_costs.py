"""Cache writes and savings as a user reads them, from runs in this process over a mock
transport: writes priced at the TTL their request asked for, what `auto` says the API did,
and what a job with its own [pricing] saved."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import polars as pl
import pyarrow as pa

from pipeline.api import run_job
from pipeline.pricing import costs, load_price_table, record_prices
from pipeline.providers.base import Usage
from pipeline.reports.html_report import write_html
from pipeline.reports.report import report
from pipeline.schema import output_schema
from pipeline.send.httpx_transport import HttpxTransport
from pipeline.store.layout import RESULTS_FILE
from tests.e2e import MODEL, label_job

GUIDE = "Rule: judge the product, not the courier; a fault makes a review negative.\n" * 300
MILLION = Decimal(1_000_000)


def answering(usage_of: Callable[[str], dict[str, Any]]) -> HttpxTransport:
    """A Messages API whose answers carry the usage `usage_of(prompt)` says."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        content = body["messages"][-1]["content"]
        prompt = content if isinstance(content, str) else "".join(b["text"] for b in content)
        answer = {
            "id": "msg_1", "type": "message", "role": "assistant", "model": MODEL,
            "content": [{"type": "text", "text": "positive"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 20, "output_tokens": 1, **usage_of(prompt)},
        }  # fmt: skip
        return httpx.Response(200, json=answer, headers={"request-id": "req_1"})

    return HttpxTransport(transport=httpx.MockTransport(handler))


def reviews(tmp: Path, texts: list[str]) -> Path:
    path = tmp / "in.csv"
    pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).write_csv(path)
    return path


def run(job: Path, transport: HttpxTransport) -> pl.DataFrame:
    run_job(job, transport=transport, api_key="sk-test-key", show_progress=False)
    return pl.read_parquet(job.parent / "out" / RESULTS_FILE)


def test_writes_given_only_as_a_total_cost_what_the_one_hour_breakpoint_asked(
    tmp_path: Path,
) -> None:
    own = [{"type": "text", "text": GUIDE, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    job = label_job(tmp_path, reviews(tmp_path, ["great", "broken"]), request={"system": own})
    table = run(job, answering(lambda _: {"cache_creation_input_tokens": 5000}))
    assert table["cache_creation_1h_tokens"].to_list() == [5000, 5000]
    assert table["cache_creation_5m_tokens"].to_list() == [0, 0]
    # Haiku 4.5: $1 input, $5 output, a 1-hour write $2 (not the 5-minute $1.25)
    assert table["cache_write_cost_usd"].to_list() == [0.01, 0.01]
    assert table["cost_usd"].to_list() == [float((20 + 5 + 10_000) / MILLION)] * 2


def test_auto_says_the_api_wrote_nothing_when_it_wrote_nothing(tmp_path: Path, capsys) -> None:
    job = label_job(
        tmp_path, reviews(tmp_path, ["great", "broken", "fine"]),
        request={"system": GUIDE, "cache": "auto"},
    )  # fmt: skip
    table = run(job, answering(lambda _: {}))  # an endpoint that caches nothing
    assert table["status"].to_list() == ["ok"] * 3
    err = capsys.readouterr().err
    assert "marked for caching" in err
    assert err.count("the API wrote nothing to the cache") == 1
    assert "cached" not in err  # never claimed


def test_a_jobs_own_prices_give_exact_savings(tmp_path: Path) -> None:
    job = label_job(
        tmp_path, reviews(tmp_path, ["great", "broken", "fresh start"]),
        pricing={MODEL: {"input": 2.0, "output": 10.0}},  # read $0.20
    )  # fmt: skip
    run(job, answering(lambda p: {} if "fresh" in p else {"cache_read_input_tokens": 4000}))
    out = tmp_path / "out"
    parsed = json.loads(report(out, ("id",), "json"), parse_float=Decimal)
    saved = {row["id"]: row["saved_by_caching_usd"] for row in parsed}
    # 4,000 reads at $0.20 instead of $2; the row without cache tokens saved exactly 0
    assert saved == {"r0": Decimal("0.0072"), "r1": Decimal("0.0072"), "r2": Decimal(0),
                     "TOTAL": Decimal("0.0144")}  # fmt: skip
    page = tmp_path / "report.html"
    write_html(pl.read_parquet(out / RESULTS_FILE), ["id"], page, "out", out)
    assert "saved by caching: $0.0144" in page.read_text()


def test_batch_rows_at_a_jobs_own_prices_say_what_the_batch_rate_saved(tmp_path: Path) -> None:
    prices = load_price_table().with_overrides({"gateway-model": {"input": 3.0, "output": 9.0}})
    price = prices.lookup("gateway-model")
    assert price is not None
    rows = []
    for ident, batch_id in (("b1", "msgbatch_1"), ("b2", "msgbatch_1"), ("o1", None)):
        tier = "batch" if batch_id else None
        usage = Usage(input_tokens=1000, output_tokens=100, service_tier=tier)
        rows.append({
            "id": ident, "status": "ok", "model": "gateway-model", "batch_id": batch_id,
            "input_tokens": 1000, "output_tokens": 100, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0, "cache_creation_5m_tokens": 0,
            "cache_creation_1h_tokens": 0, **costs(price, usage),
            "attempts": 1, "price_table_version": prices.version,
        })  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    schema = output_schema([pa.field("id", pa.string())], [])
    pl.from_arrow(pa.Table.from_pylist(rows, schema=schema)).write_parquet(out / RESULTS_FILE)
    record_prices(out, prices)  # as a run of the job keeps them
    parsed = json.loads(report(out, ("id",), "json"), parse_float=Decimal)
    by_batch = {row["id"]: row["saved_by_batch_usd"] for row in parsed}
    by_cache = {row["id"]: row["saved_by_caching_usd"] for row in parsed}
    # online: 1,000 x $3 + 100 x $9 = $0.0039; the batch rate paid half of it
    assert by_batch == {"b1": Decimal("0.00195"), "b2": Decimal("0.00195"), "o1": None,
                        "TOTAL": Decimal("0.0039")}  # fmt: skip
    assert set(by_cache.values()) == {Decimal(0)}  # no cache tokens: nothing saved
