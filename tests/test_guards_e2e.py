"""Guards a demanding user relies on: one run per output, nothing moved before validation,
--retry-errors sends only errors, bad cells become error rows, the key never echoes."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import polars as pl
import pytest

from pipeline.api import run_job_async
from pipeline.errors import Interrupted
from pipeline.job.options import RunOptions
from pipeline.simulator.process import SimulatorProcess
from tests.e2e import label_job, start_cli, wait_for
from tests.test_run_e2e import reviews

SLOW = {"latency_ms": 200}  # this module's simulator: what a reset mid-test keeps


@pytest.fixture
def sim(session_sim):
    """The session's simulator, started over with SLOW for the test."""
    with session_sim.started_over(**SLOW) as simulator:
        yield simulator


@pytest.mark.process
def test_a_second_run_on_the_same_output_is_refused(tmp_path, sim, cli):
    reviews(tmp_path / "in.csv", 60)
    job = label_job(tmp_path, tmp_path / "in.csv", limits={"concurrency": 2})
    first = start_cli(job, sim.base_url)
    wait_for(lambda: sim.stats()["requests"] >= 1, "the first run sending")  # it holds the lock
    second = cli("run", str(job), "--base-url", sim.base_url)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    assert second.returncode == 2 and "in use by another run" in second.stderr


def test_fresh_moves_nothing_when_the_run_is_refused(tmp_path, sim, cli):
    reviews(tmp_path / "in.csv", 5)
    job = label_job(tmp_path, tmp_path / "in.csv")
    assert cli("run", str(job), "--base-url", sim.base_url).returncode == 0
    bad = cli("run", str(job), "--fresh", "--input", str(tmp_path / "missing.csv"))
    assert bad.returncode == 2
    assert not list(tmp_path.glob("out.old-*")) and (tmp_path / "out" / "results.parquet").exists()


def test_retry_errors_never_sends_rows_that_were_not_tried(tmp_path, sim, cli):
    texts = [f"row {i}" + (" [[sim:status=400]]" if i == 1 else "") for i in range(10)]
    pl.DataFrame({"id": [f"r{i}" for i in range(10)], "text": texts}).write_csv(tmp_path / "in.csv")
    job = label_job(tmp_path, tmp_path / "in.csv")
    assert cli("run", str(job), "--base-url", sim.base_url, "--limit", "4").returncode == 0
    sim.reset(**SLOW)
    again = cli("run", str(job), "--base-url", sim.base_url, "--retry-errors")
    assert again.returncode == 0, again.stderr
    assert sim.stats()["requests"] == 1  # the one error row; rows 4..9 wait for a plain run


def test_an_override_cell_that_is_not_a_value_is_an_error_row(tmp_path, sim, cli):
    pl.DataFrame(
        {"id": ["a", "b", "c"], "text": ["x", "y", "z"], "mt": ["8", "abc", "2.5"]}
    ).write_csv(tmp_path / "in.csv")
    job = label_job(tmp_path, tmp_path / "in.csv", overrides={"max_tokens": "mt"})
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["status"].to_list() == ["ok", "error", "error"]
    assert out["error_type"].to_list()[1:] == ["invalid_value", "invalid_value"]
    assert "'mt' holds 'abc'" in out["error_message"][1]
    assert sim.stats()["requests"] == 1


@pytest.mark.process
def test_sigint_after_the_grace_period_still_exits(tmp_path):
    reviews(tmp_path / "in.csv", 50)
    job = label_job(tmp_path, tmp_path / "in.csv", limits={"concurrency": 2})
    # its own process, not the session's: these answers are still in flight a minute on,
    # far past the 10 s a reset waits for them
    with SimulatorProcess(latency_ms=60_000) as slow:  # answers that outlast any grace
        child = start_cli(job, slow.base_url, env={"PIPELINE_GRACE_S": "1"})
        wait_for(lambda: slow.stats()["in_flight"] >= 2, "requests in flight")
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=30)
    assert child.returncode == 130, stderr


def test_two_ctrl_cs_in_one_turn_end_the_run_without_waiting(tmp_path, session_sim):
    # The second Ctrl-C heard in the same turn of the loop as the first (as a Ray worker
    # hears them, passed on by its driver): every call ends, those waiting for the limiter
    # too, and the run with them; not after the 3 s answers, nor after the 30 s grace.
    reviews(tmp_path / "in.csv", 40)
    limits = {"concurrency": 4, "requests_per_minute": 120}  # most calls wait their turn
    job = label_job(tmp_path, tmp_path / "in.csv", limits=limits)

    async def two_signals_at_once(base_url: str) -> float:
        options = RunOptions(base_url=base_url, show_progress=False)
        run = asyncio.ensure_future(run_job_async(job, options, api_key="sk-test-key"))
        while not session_sim.stats()["in_flight"]:
            assert not run.done(), "the run ended before sending"
            await asyncio.sleep(0.05)
        # to the run's own handlers, in this process: never to pytest's (KeyboardInterrupt)
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        started = time.monotonic()
        with pytest.raises(Interrupted):
            await asyncio.wait_for(run, 10)
        return time.monotonic() - started

    with session_sim.started_over(latency_ms=3000) as slow:
        took = asyncio.run(two_signals_at_once(slow.base_url))
    assert took < 2.0


def test_dates_times_and_decimals_travel_as_text(tmp_path, sim, cli):
    import datetime
    import decimal

    pl.DataFrame(
        {
            "id": [datetime.date(2024, 1, 1), datetime.date(2024, 1, 2)],
            "text": ["a", "b"],
            "when": [datetime.datetime(2024, 1, 1, 5), datetime.datetime(2024, 2, 1)],
            "price": [decimal.Decimal("1.50"), decimal.Decimal("2.25")],
        }
    ).write_parquet(tmp_path / "in.parquet")
    job = label_job(
        tmp_path,
        tmp_path / "in.parquet",
        job={"keep_columns": ["when", "price"]},
        request={"prompt": "On {when} at {price}: {text}"},
    )
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["id"].to_list() == ["2024-01-01", "2024-01-02"]
    assert out["price"].to_list() == ["1.50", "2.25"] and out["status"].to_list() == ["ok"] * 2


def test_limit_and_pilot_runs_report_the_whole_job(tmp_path, sim, cli):
    reviews(tmp_path / "in.csv", 30)
    job = label_job(tmp_path, tmp_path / "in.csv")
    assert cli("run", str(job), "--base-url", sim.base_url).returncode == 0
    again = cli("run", str(job), "--base-url", sim.base_url, "--limit", "10")
    assert again.returncode == 0 and "not done" not in again.stderr  # nothing negative
    status = cli("status", str(tmp_path / "out"))
    assert "30 total, 30 ok, 0 error, 0 remaining" in status.stdout
    assert "complete:  yes" in status.stdout
    pilot_dir = tmp_path / "pilot"
    pilot_dir.mkdir()
    pilot = cli(
        "estimate",
        str(job),
        "--pilot",
        "5",
        "--base-url",
        sim.base_url,
        "--output",
        str(pilot_dir / "out"),
    )
    assert pilot.returncode == 0, pilot.stderr
    status = cli("status", str(pilot_dir / "out"))
    assert "30 total, 5 ok, 0 error, 25 remaining" in status.stdout
    report = cli("report", str(pilot_dir / "out"))
    assert "not done: 25 rows, projected $" in report.stdout
