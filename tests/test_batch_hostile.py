"""Batch mode against a server that misbehaves (tests/hostile_batches.py), in process: every
count comes from the server's ledger. No row is billed more than max_retries + 1 times,
the budget is never crossed, every run ends on its own, cancel stays done, a lost batch
does not hold the others, SIGINT stops a run at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import polars as pl
import pytest

from pipeline.batch.book import LOST, BatchBook
from pipeline.batch.http import Clock
from pipeline.batch.runner import BatchRunner
from pipeline.cli import main
from pipeline.errors import BatchApiError, BudgetReached, Interrupted, PipelineError
from pipeline.job.load import load_job
from pipeline.reports.status import status
from pipeline.run.plan import prepare
from tests.conftest import FakeTime
from tests.e2e import label_job
from tests.hostile_batches import USAGE, HostileBatches

KEY = "sk-hostile-test-key-0123456789"
BASE = "https://api.example.test"
MAX_RETRIES = 2
ROWS = 12


def virtual_clock() -> Clock:
    """Batch mode's clock in virtual time from now (the server stamps batches with the real
    time): a lost create's listing waits (1 s, 3 s, then until the create must be over),
    the polls and the retries' pauses all pass at once, the protocol unchanged."""
    fake = FakeTime(start=time.time())
    return Clock(now=fake.clock, sleep=fake.sleep)


def write_input(directory: Path, rows: int = ROWS) -> Path:
    path = directory / "reviews.csv"
    lines = ["id,text", *(f"{i},review number {i}" for i in range(rows))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run(
    tmp_path: Path, server: HostileBatches, *, max_cost: float | None = None, **batch: Any
) -> PipelineError | None:
    """One batch run of a 12-row job against `server`: its stop, None when it ended."""
    input_path = tmp_path / "reviews.csv"
    if not input_path.exists():
        write_input(tmp_path)
    limits: dict[str, Any] = {
        "max_retries": MAX_RETRIES,
        "timeout_s": 0.5,
        "max_answer_bytes": 2**20,
    }
    if max_cost is not None:
        limits["max_cost_usd"] = max_cost
    job_file = label_job(
        tmp_path, input_path, api={"mode": "batch", "base_url": BASE},
        batch={"poll_s": 0.1, **batch}, limits=limits,
    )  # fmt: skip
    plan = prepare(load_job(job_file), api_key=KEY)
    runner = BatchRunner(
        plan, transport=httpx.MockTransport(server), show_progress=False, clock=virtual_clock()
    )
    try:
        asyncio.run(asyncio.wait_for(runner.run(), 60))
    except PipelineError as e:
        return e
    finally:
        if plan.lock is not None:
            plan.lock.close()
    return None


def results(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "results.parquet")


def assert_bounded(server: HostileBatches) -> None:
    assert server.sent, "nothing was sent"
    assert max(server.sent.values()) <= MAX_RETRIES + 1, server.sent


# -- 1. a batch the run created is never judged foreign ------------------------------------


@pytest.mark.parametrize("first", ["unknown", "too_large"])
def test_a_stray_first_line_never_makes_a_batch_of_ours_foreign(tmp_path: Path, first: str) -> None:
    server = HostileBatches(results_first=first)
    assert run(tmp_path, server) is None
    assert server.calls["create"] == 1  # created once, never again
    assert max(server.sent.values()) == 1
    frame = results(tmp_path)
    assert frame.height == ROWS and frame["status"].to_list().count("ok") >= ROWS - 1
    too_large = frame.filter(pl.col("error_type") == "answer_too_large")
    assert too_large["cost_usd"].null_count() == too_large.height  # billed: unknown, not 0


# -- 2. missing, cut or unreadable lines cost a try and a bound ----------------------------


@pytest.mark.parametrize(
    "fault",
    [{"drop": 3}, {"cut": True}, {"gzip_cut": True}, {"undecodable": True}],
    ids=["left-out", "cut-short", "gzip-cut", "undecodable"],
)
def test_rows_without_a_readable_line_are_bought_at_most_max_retries_plus_one_times(
    tmp_path: Path, fault: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    server = HostileBatches(**fault)
    assert run(tmp_path, server) is None  # ends on its own
    assert_bounded(server)
    frame = results(tmp_path)
    assert frame.height == ROWS
    missing = frame.filter(pl.col("error_type") == "no_result")
    assert missing.height >= 1 and missing["cost_usd"].null_count() == missing.height
    assert set(missing["attempts"].to_list()) == {MAX_RETRIES + 1}
    said = capsys.readouterr().err
    assert "had no readable result line" in said


def test_a_download_broken_off_halfway_is_resumed_without_buying_anything_again(
    tmp_path: Path,
) -> None:
    server = HostileBatches(break_once=True)
    assert run(tmp_path, server) is None
    assert server.calls["results"] == 2 and server.calls["create"] == 1
    assert results(tmp_path)["status"].to_list() == ["ok"] * ROWS


def test_rows_left_out_of_one_download_are_read_from_the_next(tmp_path: Path) -> None:
    server = HostileBatches(drop_once=4)
    assert run(tmp_path, server) is None
    assert server.calls["results"] == 2 and server.calls["create"] == 1
    assert results(tmp_path)["status"].to_list() == ["ok"] * ROWS


# -- 3, 4, 5: the budget counts every create and every unknown cost ------------------------


# claude-haiku-4-5 at batch prices, USD per million tokens: input (at the dearest rate a
# request could be billed at, a 1-hour cache write: 2x) and output
INPUT_MAX, INPUT, OUTPUT = Decimal("1.0"), Decimal("0.5"), Decimal("2.5")
MAX_TOKENS = 16


def billed_usd(server: HostileBatches, *, known: bool) -> Decimal:
    """What the server billed, in the only terms a client can hold it to: each answer at
    its usage's price when the client could read it, else at the most it could cost
    (input at 1 token per 2 bytes of the request, at the dearest input rate, and
    max_tokens of output)."""
    if known:
        each = USAGE["input_tokens"] * INPUT + USAGE["output_tokens"] * OUTPUT
        return each * len(server.billed_bytes) / 1_000_000
    worst = (
        sum((size // 2 + 1) * INPUT_MAX + MAX_TOKENS * OUTPUT for size in server.billed_bytes)
        / 1_000_000
    )
    return Decimal(worst)


@pytest.mark.parametrize(
    ("fault", "known"),
    [
        ({"no_usage": True}, False),
        ({"drop": ROWS}, False),
        ({"malformed": True}, True),
        ({"creates": ["500-made"] * 9}, True),
    ],
    ids=["usage-less", "all-lines-missing", "malformed", "creates-unconfirmed"],
)
def test_the_budget_is_never_crossed_whatever_the_server_reports(
    tmp_path: Path, fault: dict[str, Any], known: bool
) -> None:
    server = HostileBatches(**fault)
    budget = Decimal("0.0006")  # about 4 rows' worst case: far less than the job's
    for _ in range(3):  # the run, and resumes of it: the budget holds across runs
        stop = run(tmp_path, server, max_cost=float(budget), max_requests=4)
        assert stop is None or isinstance(stop, BudgetReached), stop
    assert billed_usd(server, known=known) <= budget
    assert_bounded(server)


def test_a_re_create_is_counted_against_the_budget_before_it_is_sent(tmp_path: Path) -> None:
    """A create answered 500 and not listed is created again: the first may exist unseen,
    so the second must fit beside it. Room for one batch's worst case: no second create."""
    server = HostileBatches(creates=["500"])  # refused, not made (nothing to adopt)
    stop = run(tmp_path, server, max_cost=0.0006, max_requests=4)
    assert isinstance(stop, BudgetReached), stop
    assert server.calls["create"] == 1
    assert run(tmp_path, server, max_cost=1.0) is None  # a higher budget goes on
    assert results(tmp_path)["status"].to_list() == ["ok"] * ROWS
    assert max(server.sent.values()) == 1


def test_a_billed_answer_that_does_not_parse_is_not_free(tmp_path: Path) -> None:
    server = HostileBatches(malformed=True)
    assert run(tmp_path, server) is None
    frame = results(tmp_path)
    assert frame["error_type"].unique().to_list() == ["malformed_answer"]
    assert (frame["cost_usd"] > 0).all()  # its usage was readable: its own cost
    assert (frame["input_tokens"] == USAGE["input_tokens"]).all()


def test_usage_less_answers_count_at_their_worst_case_across_runs(tmp_path: Path) -> None:
    server = HostileBatches(no_usage=True)
    assert run(tmp_path, server) is None
    assert results(tmp_path)["cost_usd"].null_count() == ROWS
    record = orjson.loads((tmp_path / "out" / "run.json").read_bytes())
    assert record["unknown_cost_worst_usd"] > 0


# -- 6. cancel stays done ------------------------------------------------------------------


def test_canceled_rows_are_not_sent_again_by_the_run_that_saw_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = HostileBatches(canceled={1})
    assert run(tmp_path, server) is None
    assert server.calls["create"] == 1  # no new batch for the canceled rows
    assert "canceled" in capsys.readouterr().err
    assert results(tmp_path)["status"].null_count() == 0
    assert run(tmp_path, server) is None  # a later run sends them
    assert server.calls["create"] == 2
    assert results(tmp_path)["status"].to_list() == ["ok"] * ROWS


def test_a_row_the_server_keeps_canceling_is_not_sent_for_ever(tmp_path: Path) -> None:
    server = HostileBatches(cancel_all=True)
    for _ in range(MAX_RETRIES + 3):
        assert run(tmp_path, server) is None
    assert_bounded(server)
    assert results(tmp_path)["error_type"].unique().to_list() == ["canceled"]


# -- 7. one lost batch does not hold the others hostage ------------------------------------


def test_a_batch_answering_404_is_lost_and_the_others_are_collected(tmp_path: Path) -> None:
    server = HostileBatches(gone={1})
    stop = run(tmp_path, server, max_requests=4)
    assert stop is None
    assert_bounded(server)
    book = BatchBook(tmp_path / "out")
    assert book.entries[0].status is not None and book.entries[0].status.state == LOST
    assert not book.pending()  # --fresh, cancel and runs work again
    assert results(tmp_path)["status"].to_list() == ["ok"] * ROWS  # its rows sent again
    said = status(tmp_path / "out")
    assert "lost" in said and "HTTP 404" in said


def test_a_create_answered_without_an_id_is_adopted_when_listed(tmp_path: Path) -> None:
    server = HostileBatches(creates=["no-id"])
    assert run(tmp_path, server) is None
    assert server.calls["create"] == 1 and max(server.sent.values()) == 1


def test_a_create_answered_without_an_id_is_lost_not_created_again_blind(
    tmp_path: Path,
) -> None:
    server = HostileBatches(creates=["ok", "no-id-unlisted"])
    stop = run(tmp_path, server, max_requests=6)
    assert isinstance(stop, BatchApiError) and "without a batch id" in str(stop)
    assert server.calls["create"] == 2
    book = BatchBook(tmp_path / "out")
    assert [e.status.state for e in book.entries if e.status] == ["collected", LOST]
    assert results(tmp_path)["status"].to_list()[:6] == ["ok"] * 6


def test_a_batch_in_progress_past_its_expiry_is_handled_as_expired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = HostileBatches(stuck={1})
    assert run(tmp_path, server) is None
    assert capsys.readouterr().err.count("past its expiry (") == 1  # said once
    assert server.calls["cancel"] == 1
    assert results(tmp_path)["status"].to_list() == ["ok"] * ROWS
    assert_bounded(server)


# -- 8, 9: signals, endless lists, creates that may have been made --------------------------


def test_sigint_after_a_create_answered_500_exits_at_once(tmp_path: Path) -> None:
    def interrupt(_: HostileBatches) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    server = HostileBatches(creates=["500-made"], on_create=interrupt)
    started = time.monotonic()
    stop = run(tmp_path, server)
    assert isinstance(stop, Interrupted)
    assert time.monotonic() - started < 5
    assert server.calls["create"] == 1  # not bought again


def test_an_endless_list_is_a_server_fault_not_a_hang(tmp_path: Path) -> None:
    server = HostileBatches(creates=["500-made"], endless_list=True)
    stop = run(tmp_path, server)
    assert isinstance(stop, BatchApiError) and "has_more" in str(stop)
    assert server.calls["create"] == 1


@pytest.mark.parametrize("answer", ["408-made", "409-made", "500-made"])
def test_a_create_that_may_have_been_made_is_adopted_never_sent_blind(
    tmp_path: Path, answer: str
) -> None:
    server = HostileBatches(creates=[answer])
    assert run(tmp_path, server) is None
    assert server.calls["create"] == 1 and max(server.sent.values()) == 1
    assert results(tmp_path)["status"].to_list() == ["ok"] * ROWS


# -- pipeline cancel ------------------------------------------------------------------------


def test_cancel_with_nothing_in_progress_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, HostileBatches()) is None  # every batch collected
    assert main(["cancel", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert "nothing to cancel" in captured.out and "no batch in progress" in captured.err
