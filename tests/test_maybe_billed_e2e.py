"""Money that may have been billed with no answer seen, through the real CLI: a server
that bills and then drops the connection never gets past the budget (by its own ledger),
the summary says how much may have been billed unseen, and after a `kill -9` status and
report say how many requests were in flight and unrecorded."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from pipeline.simulator.process import SimulatorProcess
from tests.e2e import REPO, label_job, start_cli

BUDGET = Decimal("0.01")
# Haiku 4.5, USD per million tokens: the test's own prices, not the pipeline's table
INPUT_PRICE, OUTPUT_PRICE = Decimal(1), Decimal(5)
IN_FLIGHT = re.compile(
    r"(\d+) requests were in flight and unrecorded when the run stopped "
    r"\(they may have been billed, up to \$[\d.,]+ at their worst case\)"
)


@contextmanager
def bill_drop_server(share: float) -> Iterator[str]:
    """tests/hostile_server.py billing every request and dropping `share` of answers."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.hostile_server", "--mode", "bill-drop",
         "--drop-share", str(share)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        yield f"http://127.0.0.1:{json.loads(child.stdout.readline())['port']}"
    finally:
        child.terminate()
        child.wait(timeout=10)


def reviews(path: Path, count: int) -> Path:
    texts = [f"review {i}: the blender works, though loud at full speed" for i in range(count)]
    pl.DataFrame({"id": [f"r{i}" for i in range(count)], "text": texts}).write_csv(path)
    return path


def usd(entries: list[dict[str, Any]]) -> Decimal:
    tokens_in = sum(e["input_tokens"] for e in entries)
    tokens_out = sum(e["output_tokens"] for e in entries)
    return (tokens_in * INPUT_PRICE + tokens_out * OUTPUT_PRICE) / 1_000_000


def billed(base_url: str) -> tuple[Decimal, int, Decimal]:
    """From the server's ledger: USD billed in all, answers dropped, USD billed for them."""
    entries: list[dict[str, Any]] = httpx.get(f"{base_url}/_ledger", timeout=10).json()["billed"]
    dropped = [e for e in entries if e["dropped"]]
    return usd(entries), len(dropped), usd(dropped)


def test_a_server_that_bills_then_drops_never_bills_past_the_budget(
    tmp_path: Path, cli: Any
) -> None:
    data = reviews(tmp_path / "in.csv", 300)
    limits = {"concurrency": 8, "max_retries": 8, "max_cost_usd": float(BUDGET)}
    job = label_job(tmp_path, data, limits=limits)
    with bill_drop_server(0.3) as base_url:
        first = cli("run", str(job), "--base-url", base_url, "--no-progress")
        total, dropped, dropped_usd = billed(base_url)
        assert first.returncode == 3, first.stderr  # stopped at the budget
        assert dropped >= 10 and total <= BUDGET, (total, dropped)
        unseen = re.search(
            r"(\d+) requests were sent whole but their answers never came \(dropped, timed "
            r"out\): they may have been billed unseen, up to \$([\d.]+) at their worst case",
            first.stderr,
        )
        assert unseen is not None, first.stderr
        assert int(unseen.group(1)) == dropped  # every dropped answer, none missed
        assert Decimal(unseen.group(2)) >= dropped_usd  # a worst case: never below the bill
        again = cli("run", str(job), "--base-url", base_url, "--no-progress")
        assert again.returncode == 3, again.stderr  # a later run counts them too
        assert billed(base_url)[0] <= BUDGET
    status = cli("status", str(tmp_path / "out")).stdout
    assert f"{dropped:,} requests were sent whole but their answers never came" in status


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        time.sleep(0.02)


def journaled(out: Path) -> int:
    journal = out / "journal.jsonl"
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


@pytest.mark.process
def test_after_kill_9_status_and_report_name_the_requests_in_flight(
    tmp_path: Path, cli: Any, session_sim: SimulatorProcess
) -> None:
    # rows enough for the kill to come with 16 in flight and many rows left (about 50 are
    # answered by then); the resume answers the rest, 300 ms each
    data = reviews(tmp_path / "in.csv", 160)
    job = label_job(tmp_path, data, limits={"concurrency": 16, "max_retries": 8})
    out = tmp_path / "out"
    with session_sim.started_over(latency_ms=300) as simulator:
        base_url = simulator.base_url
        first = cli("run", str(job), "--base-url", base_url, "--no-progress", "--limit", "20")
        assert first.returncode == 0, first.stderr  # results.parquet for the report
        child = start_cli(job, base_url)
        try:
            wait_for(lambda: journaled(out) >= 30 and simulator.stats()["in_flight"] >= 8)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        status = cli("status", str(out))
        report = cli("report", str(out))
        for text in (status.stdout, report.stdout):
            found = IN_FLIGHT.search(text)
            assert found is not None, text
            assert 1 <= int(found.group(1)) <= 16  # at most the concurrency
        resumed = cli("run", str(job), "--base-url", base_url, "--no-progress")
        assert resumed.returncode == 0, resumed.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["maybe_billed"]["unrecorded_requests"] == int(found.group(1))
    assert "when earlier runs stopped" in cli("status", str(out)).stdout
