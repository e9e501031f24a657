"""cache = "auto" against the simulator's real prefix cache, in its own process: one write
before any read with 32 in flight, and costs exact per row against its ledger."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.api import run_job
from pipeline.simulator.process import SimulatorProcess
from tests.e2e import label_job

GUIDE = "Rule: judge the product, not the courier; a fault makes a review negative.\n" * 300
PRICES = {"input": Decimal(1), "output": Decimal(5)}  # Haiku 4.5, USD per million tokens


@pytest.fixture
def sim(session_sim: SimulatorProcess) -> Any:
    with session_sim.started_over(latency_ms=200.0, batch_latency_s=0.2) as simulator:
        yield simulator


def cached_job(tmp: Path, rows: int, **sections: dict[str, Any]) -> Path:
    texts = [f"review {i}: {'works great' if i % 3 else 'stopped working'}" for i in range(rows)]
    inputs = tmp / "in.csv"
    pl.DataFrame({"id": [f"k{i:04d}" for i in range(rows)], "text": texts}).write_csv(inputs)
    request = {"system": GUIDE, "cache": "auto", **sections.pop("request", {})}
    return label_job(tmp, inputs, request=request, **sections)


def run(job: Path, base_url: str, **options: Any) -> Any:
    return run_job(job, base_url=base_url, api_key="sk-test", show_progress=False, **options)


def expected_cost(entry: dict[str, Any], batch: bool) -> Decimal:
    base = PRICES["input"]
    total = (
        entry["input_tokens"] * base
        + entry["output_tokens"] * PRICES["output"]
        + entry["cache_5m_tokens"] * base * Decimal("1.25")
        + entry["cache_1h_tokens"] * base * 2
        + entry["cache_read_input_tokens"] * base * Decimal("0.1")
    ) / 1_000_000
    return total * Decimal("0.5") if batch else total


def test_with_32_in_flight_one_write_comes_before_any_read(sim: Any, tmp_path: Path) -> None:
    job = cached_job(tmp_path, 64, limits={"concurrency": 32})
    assert run(job, sim.base_url).rows_ok == 64
    ledger = sorted(sim.ledger(), key=lambda e: e["ts"])
    events = [e["cache_event"] for e in ledger]
    assert events[0] == "write" and events.count("write") == 1
    assert events[1:] == ["read"] * 63
    table = pl.read_parquet(tmp_path / "out" / "results.parquet")
    by_id = {e["request_id"]: e for e in ledger}
    for row in table.iter_rows(named=True):
        assert Decimal(repr(row["cost_usd"])) == expected_cost(by_id[row["request_id"]], False)
    assert int((table["cache_read_input_tokens"] > 0).sum()) == 63


def test_a_pause_longer_than_the_ttl_costs_one_new_write(sim: Any, tmp_path: Path) -> None:
    job = cached_job(tmp_path, 40, limits={"concurrency": 32})
    run(job, sim.base_url, limit=20)
    sim.age_cache(301.0)  # the 5-minute entry expired while no run was alive
    run(job, sim.base_url)  # the 20 rows left, 32 in flight
    events = [e["cache_event"] for e in sorted(sim.ledger(), key=lambda e: e["ts"])]
    assert events == ["write"] + ["read"] * 19 + ["write"] + ["read"] * 19


def test_batch_mode_caches_with_the_one_hour_ttl_at_batch_prices(sim: Any, tmp_path: Path) -> None:
    job = cached_job(tmp_path, 20, api={"mode": "batch"}, batch={"poll_s": 0.2})
    assert run(job, sim.base_url).rows_ok == 20
    ledger = {e["message_id"]: e for e in sim.ledger()}
    table = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert int(table["cache_creation_1h_tokens"].fill_null(0).sum()) > 0
    assert int(table["cache_creation_5m_tokens"].fill_null(0).sum()) == 0
    for row in table.iter_rows(named=True):
        assert Decimal(repr(row["cost_usd"])) == expected_cost(ledger[row["request_id"]], True)


def test_cache_sometimes_is_a_one_line_error_naming_the_key_and_choices(
    tmp_path: Path, cli: Any
) -> None:
    job = cached_job(tmp_path, 3, request={"cache": "sometimes"})
    done = cli("run", str(job), "--base-url", "http://127.0.0.1:9")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "[request] cache" in line and "off" in line and "auto" in line
