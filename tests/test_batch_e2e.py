"""Batch mode end to end against the simulator in its own process: every row billed exactly
once per the simulator's ledger, whatever torn state a crash left on disk.

Torn states are built on disk the way a `kill -9` leaves them (an intent without an id; an
intent whose batch the server made; a batch in progress; a batch half collected), then the
job is run again and the ledger counted.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
import urllib.request
from collections import Counter
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.api import run_job
from pipeline.batch import http as batch_http
from pipeline.batch.book import COLLECTED, BatchBook, parse_custom_id
from pipeline.batch.http import Clock
from pipeline.batch.submit import SETTLE_MARGIN_S, create_body
from pipeline.errors import BatchesInProgress, BudgetReached, UsageError
from pipeline.job.load import load_job
from pipeline.simulator.process import SimulatorProcess
from pipeline.store.layout import part_files
from tests.e2e import MODEL, label_job, start_cli, wait_for
from tests.simulator_helpers import post

PROMPT = "Review: {text}\nAnswer with one word: positive, negative or neutral."
WORDS = ["great", "awful", "fine", "superb", "broken", "okay", "lovely", "poor"]


@pytest.fixture
def sim(session_sim: SimulatorProcess) -> Any:
    """The session's simulator, started over with batches that end in 0.2 s."""
    with session_sim.started_over(batch_latency_s=0.2) as simulator:
        yield simulator


def reviews(path: Path, n: int, texts: list[str] | None = None) -> Path:
    texts = texts or [f"{WORDS[i % len(WORDS)]} product number {i}" for i in range(n)]
    pl.DataFrame({"id": [f"k{i:04d}" for i in range(n)], "text": texts}).write_csv(path)
    return path


def batch_job(tmp: Path, n: int, **overrides: dict[str, Any]) -> Path:
    limits = {"timeout_s": 3, **overrides.pop("limits", {})}  # a lost create is over in 3 s
    sections: dict[str, dict[str, Any]] = {
        "api": {"mode": "batch"},
        "batch": {"poll_s": 0.2},
        "limits": limits,
        **overrides,
    }
    return label_job(tmp, reviews(tmp / "in.csv", n), **sections)


def run(job: Path, base_url: str, **options: Any) -> Any:
    return run_job(job, base_url=base_url, api_key="sk-test", show_progress=False, **options)


def billed_rows(simulator: SimulatorProcess) -> Counter[int]:
    """How many times the simulator billed each input row in a batch."""
    rows: Counter[int] = Counter()
    for entry in simulator.ledger():
        if entry["endpoint"] == "batch":
            named = parse_custom_id(entry["custom_id"])
            assert named is not None
            rows[named[0]] += 1
    return rows


def results(tmp: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp / "out" / "results.parquet")


def assert_each_row_billed_once(simulator: SimulatorProcess, tmp: Path, n: int) -> None:
    table = results(tmp)
    assert table.height == n and (table["status"] == "ok").all()
    assert billed_rows(simulator) == Counter(range(n))


def test_a_batch_run_bills_every_row_once_at_half_price_exactly(sim: Any, tmp_path: Path) -> None:
    job = batch_job(tmp_path, 40)
    summary = run(job, sim.base_url)
    assert summary.rows_ok == 40
    table = results(tmp_path)
    assert table["id"].to_list() == [f"k{i:04d}" for i in range(40)]  # input order
    ledger = {e["message_id"]: e for e in sim.ledger() if e["endpoint"] == "batch"}
    assert sorted(table["request_id"].to_list()) == sorted(ledger)  # the message ids
    assert table["batch_id"].n_unique() == 1 and table["batch_id"][0].startswith("msgbatch_")
    million = Decimal(1_000_000)
    for row in table.iter_rows(named=True):
        entry = ledger[row["request_id"]]
        assert entry["service_tier"] == "batch"
        expected = (
            (
                entry["input_tokens"] * Decimal(1)
                + entry["output_tokens"] * Decimal(5)
                + entry["cache_5m_tokens"] * Decimal("1.25")
                + entry["cache_1h_tokens"] * Decimal(2)
                + entry["cache_read_input_tokens"] * Decimal("0.1")
            )
            * Decimal("0.5")
            / million
        )
        assert Decimal(repr(row["cost_usd"])) == expected
    assert billed_rows(sim) == Counter(range(40))


def render(text: str) -> dict[str, Any]:
    """The params the job renders for a row (the job of `batch_job`)."""
    content = PROMPT.replace("{text}", text)
    return {
        "model": MODEL,
        "max_tokens": 16,
        "temperature": 0,
        "messages": [{"role": "user", "content": content}],
    }


def torn_intent(tmp: Path, sim: Any, rows: list[int]) -> Any:
    """An intent on disk, as the crash right before (or during) its create left it."""
    return BatchBook(tmp / "out").write_intent(
        rows, [1] * len(rows), Decimal("0.01"), base_url=sim.base_url,
        api_key_env="AISA_API_KEY", auth="bearer", anthropic_version="2023-06-01",
    )  # fmt: skip


class SkippingClock:
    """Batch mode's time (`Clock`) for a run whose long pauses are skipped past: a pause
    over SHORT_S lasts SHORT_S, and the run's clock moves by all of it (its time and its
    pauses together, as `Clock` asks of a fake); the shorter ones (polls) are real."""

    SHORT_S = 0.2

    def __init__(self) -> None:
        self.skipped = 0.0
        self.pauses: list[float] = []  # every pause asked for, in order

    def now(self) -> float:
        return time.time() + self.skipped

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        real = min(max(seconds, 0.0), self.SHORT_S)
        await asyncio.sleep(real)
        self.skipped += max(seconds, 0.0) - real

    def clock(self) -> Clock:
        return Clock(now=self.now, sleep=self.sleep)


def test_an_intent_whose_create_was_never_sent_is_created_on_resume(
    sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = batch_job(tmp_path, 30)
    run(job, sim.base_url, limit=10)  # rows 0..9 done: the output is this job's
    torn = torn_intent(tmp_path, sim, list(range(10, 20)))  # killed before the create went out
    skipping = SkippingClock()  # the resume's time: its wait for the intent passes at once
    monkeypatch.setattr(batch_http, "Clock", skipping.clock)  # each BatchApi's default
    run(job, sim.base_url)
    # it listed, and created only once any create sent for the intent must have been over
    # (timeout_s 3 + the margin after the intent), in its time
    assert skipping.now() >= torn.intent.intent_at + 3 + SETTLE_MARGIN_S
    assert sum(skipping.pauses) >= 3 + SETTLE_MARGIN_S - 1  # waited so, not skipped by a setting
    assert_each_row_billed_once(sim, tmp_path, 30)
    entry = BatchBook(tmp_path / "out").entries[1]
    assert entry.status is not None and not entry.status.adopted
    assert entry.status.state == COLLECTED


def test_a_create_whose_answer_was_lost_is_adopted_not_sent_again(sim: Any, tmp_path: Path) -> None:
    job = batch_job(tmp_path, 30)
    run(job, sim.base_url, limit=10)
    entry = torn_intent(tmp_path, sim, list(range(10, 20)))
    texts = [f"{WORDS[i % len(WORDS)]} product number {i}" for i in range(30)]
    params = [orjson.dumps(render(texts[r])) for r in entry.intent.rows]
    body = create_body(entry.intent.nonce, entry.intent.rows, params)
    made = post(sim.base_url, body, "/v1/messages/batches")
    assert made.status == 200  # the server made it; the answer never reached the run
    run(job, sim.base_url)
    assert_each_row_billed_once(sim, tmp_path, 30)
    adopted = BatchBook(tmp_path / "out").entries[1]
    assert adopted.status is not None and adopted.status.adopted
    assert adopted.status.batch_id == made.json["id"]


def test_lost_create_answers_during_a_run_are_adopted(
    tmp_path: Path, session_sim: SimulatorProcess
) -> None:
    with session_sim.started_over(batch_latency_s=0.2, batch_lose_first_creates=2) as simulator:
        job = batch_job(tmp_path, 25, batch={"max_requests": 10})
        run(job, simulator.base_url)
        assert_each_row_billed_once(simulator, tmp_path, 25)
        entries = BatchBook(tmp_path / "out").entries
        assert [e.status.adopted for e in entries if e.status] == [True, True, False]


def test_a_batch_in_progress_is_collected_by_the_next_run_never_sent_again(
    tmp_path: Path,
    cli: Any,
    session_sim: SimulatorProcess,
) -> None:
    with session_sim.started_over(batch_latency_s=1.5) as simulator:
        job = batch_job(tmp_path, 20)
        with pytest.raises(BatchesInProgress) as stopped:
            run(job, simulator.base_url, detach=True)
        assert stopped.value.exit_code == 5
        (entry,) = BatchBook(tmp_path / "out").entries
        assert entry.status is not None and entry.status.state == "in_progress"
        assert "in_progress" in cli("status", str(tmp_path / "out")).stdout
        online = load_job(job)
        online = replace(online, api=replace(online.api, mode="online"))
        with pytest.raises(UsageError, match="not collected yet"):  # it would pay twice
            run(online, simulator.base_url)
        run(job, simulator.base_url)  # a resume: polls, collects, sends nothing new
        assert_each_row_billed_once(simulator, tmp_path, 20)
        assert len(BatchBook(tmp_path / "out").entries) == 1


def test_a_batch_half_collected_is_collected_again_without_paying(sim: Any, tmp_path: Path) -> None:
    job = batch_job(tmp_path, 30)
    run(job, sim.base_url)
    out = tmp_path / "out"
    before = results(tmp_path)
    (part,) = part_files(out)
    table = pq.read_table(part)
    pq.write_table(table.slice(0, 15), part, write_page_checksum=True)  # the kill came mid-way
    (out / "results.parquet").unlink()
    book = BatchBook(out)
    entry = book.entries[0]
    assert entry.status is not None
    entry.status.state, entry.status.again = "ended", []
    book.save(entry)
    run(job, sim.base_url)
    assert_each_row_billed_once(sim, tmp_path, 30)
    assert results(tmp_path).drop("finished_at").equals(before.drop("finished_at"))


def test_errored_and_expired_rows_go_again_and_only_they(
    tmp_path: Path, session_sim: SimulatorProcess
) -> None:
    with session_sim.started_over(
        batch_latency_s=0.1, batch_errored_rate=0.3, batch_expired_rate=0.2, seed=7
    ) as simulator:
        job = batch_job(tmp_path, 60)
        run(job, simulator.base_url)
        assert_each_row_billed_once(simulator, tmp_path, 60)
        entries = BatchBook(tmp_path / "out").entries
        assert len(entries) >= 2
        for earlier, later in itertools.pairwise(entries):
            assert earlier.status is not None
            assert sorted(later.intent.rows) == sorted(r for r, _ in earlier.status.again)
        attempts = results(tmp_path)["attempts"]
        assert attempts.max() > 1 and attempts.min() == 1


def test_a_non_transient_error_is_an_error_row_and_not_sent_again(sim: Any, tmp_path: Path) -> None:
    texts = ["fine product", "bad one [[sim:status=400]]", "great thing"]
    job = label_job(
        tmp_path, reviews(tmp_path / "in.csv", 3, texts), api={"mode": "batch"},
        batch={"poll_s": 0.2},
    )  # fmt: skip
    run(job, sim.base_url)
    table = results(tmp_path)
    assert table["status"].to_list() == ["ok", "error", "ok"]
    assert table["error_type"][1] == "invalid_request_error"
    assert table["http_status"][1] == 400 and table["cost_usd"][1] == 0.0
    assert len(BatchBook(tmp_path / "out").entries) == 1


def test_mixed_online_and_batch_rows_are_each_priced_by_their_own_tier(
    sim: Any, tmp_path: Path
) -> None:
    job = label_job(tmp_path, reviews(tmp_path / "in.csv", 20))
    run(job, sim.base_url, limit=8)  # online, full price
    run(job, sim.base_url, batch=True)  # the rest at the batch rate
    table = results(tmp_path)
    assert (table["status"] == "ok").all()
    ledger = sim.ledger()  # online rows keep the request-id header, batch rows the message id
    by_id = {e["request_id"]: e for e in ledger} | {e["message_id"]: e for e in ledger}
    for row in table.iter_rows(named=True):
        entry = by_id[row["request_id"]]
        online = row["batch_id"] is None
        assert online == (entry["endpoint"] != "batch")
        full = Decimal(entry["input_tokens"]) + 5 * Decimal(entry["output_tokens"])
        full += (
            Decimal("1.25") * entry["cache_5m_tokens"]
            + Decimal("0.1") * entry["cache_read_input_tokens"]
            + 2 * Decimal(entry["cache_1h_tokens"])
        )
        expected = full / 1_000_000 * (1 if online else Decimal("0.5"))
        assert Decimal(repr(row["cost_usd"])) == expected
    assert table["batch_id"].null_count() == 8


def test_batches_are_split_by_size_and_never_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_sim: SimulatorProcess
) -> None:
    monkeypatch.setenv("PIPELINE_BATCH_MAX_BYTES", "4000")
    with session_sim.started_over(batch_latency_s=0.1, batch_max_bytes=4000) as simulator:
        job = batch_job(tmp_path, 40)
        run(job, simulator.base_url)
        assert_each_row_billed_once(simulator, tmp_path, 40)
        entries = BatchBook(tmp_path / "out").entries
        assert len(entries) >= 3
        assert all(e.status and e.status.state == COLLECTED for e in entries)  # none refused


def test_a_batch_the_server_finds_too_large_is_split_in_two(
    tmp_path: Path, session_sim: SimulatorProcess
) -> None:
    with session_sim.started_over(batch_latency_s=0.1, batch_max_bytes=3000) as simulator:
        job = batch_job(tmp_path, 30)
        run(job, simulator.base_url)
        assert_each_row_billed_once(simulator, tmp_path, 30)
        states = Counter(e.status.state for e in BatchBook(tmp_path / "out").entries if e.status)
        assert states["abandoned"] >= 1 and states[COLLECTED] >= 2


def test_the_budget_submits_what_fits_and_stops_with_exit_3(sim: Any, tmp_path: Path) -> None:
    # a row's worst case at batch prices: ~(bytes/2 input + 16 output tokens) x half price
    job = batch_job(tmp_path, 40, limits={"max_cost_usd": 0.002})
    with pytest.raises(BudgetReached) as stopped:
        run(job, sim.base_url)
    assert stopped.value.exit_code == 3
    done = results(tmp_path)
    assert 0 < done.height < 40 and (done["status"] == "ok").all()
    assert sum(billed_rows(sim).values()) == done.height  # nothing sent beyond the budget
    assert float(done["cost_usd"].sum()) <= 0.002


def test_canceled_rows_are_sent_again_by_the_next_run(
    tmp_path: Path, cli: Any, session_sim: SimulatorProcess
) -> None:
    with session_sim.started_over(batch_latency_s=3.0) as simulator:
        job = batch_job(tmp_path, 40)
        out = tmp_path / "out"
        assert cli("run", str(job), "--base-url", simulator.base_url, "--detach").returncode == 5
        wait_for(lambda: simulator.stats()["billed"] >= 1, "a slice processed")  # most not
        cancel = cli("cancel", str(out), "--base-url", simulator.base_url)
        assert cancel.returncode == 0, cancel.stderr
        assert "canceling" in cancel.stdout
        assert "a later run sends the canceled rows again" in cancel.stdout
        run(job, simulator.base_url)  # collects; cancel stays done: nothing created
        assert len(BatchBook(out).entries) == 1 and results(tmp_path).height < 40
        run(job, simulator.base_url)  # a later run sends the canceled rows
        assert_each_row_billed_once(simulator, tmp_path, 40)
        first, *later = BatchBook(out).entries
        assert first.status is not None and first.status.again  # the canceled rows
        assert sorted(r for e in later for r in e.intent.rows) == sorted(
            r for r, _ in first.status.again
        )


@pytest.mark.process
def test_ctrl_c_while_waiting_leaves_the_batches_running_and_exits_130(
    tmp_path: Path, cli: Any, session_sim: SimulatorProcess
) -> None:
    with session_sim.started_over(batch_latency_s=60.0) as simulator:
        job = batch_job(tmp_path, 10)
        process = start_cli(job, simulator.base_url)
        status = tmp_path / "out" / "batches" / "batch-000001.json"
        wait_for(status.exists, "the batch created", timeout=30)
        time.sleep(0.3)  # waiting now
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 130, stderr
        assert "left running on the server" in stderr
        with urllib.request.urlopen(simulator.base_url + "/v1/messages/batches") as answer:
            listed = orjson.loads(answer.read())
        assert [b["processing_status"] for b in listed["data"]] == ["in_progress"]
        tampered = tmp_path / "out" / "batches" / "batch-000001.intent.json"
        original = tampered.read_bytes()
        record = orjson.loads(original)
        tampered.write_bytes(orjson.dumps({**record, "api_key_env": "OTHER_SECRET"}))
        no_host = cli("cancel", str(tmp_path / "out"), env={"OTHER_SECRET": "x"})
        assert no_host.returncode == 2 and "--base-url" in no_host.stdout  # nothing canceled
        tampered.write_bytes(original)
        cancel = cli("cancel", str(tmp_path / "out"), "--base-url", simulator.base_url)
        assert cancel.returncode == 0 and "canceling" in cancel.stdout
        assert billed_rows(simulator) == Counter()


def test_a_base_url_without_batch_endpoints_stops_before_sending(
    tmp_path: Path, cli: Any, sim: SimulatorProcess
) -> None:
    simulator = sim  # its online endpoint, under a path with no batches
    job = batch_job(tmp_path, 5)
    done = cli("run", str(job), "--base-url", simulator.base_url + "/nothing-here")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "does not serve the Message Batches API" in line
    assert simulator.ledger() == [] and not (tmp_path / "out" / "batches").exists()


def test_a_batch_run_whose_output_lease_could_run_out_stops_creating_and_exits_6(
    tmp_path: Path, cli: Any, session_sim: SimulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An output URL whose lease cannot be renewed: the batch run stops before the lease
    could lapse, as an online run does (a run taking the output over must not find this one
    creating batches its book at the URL does not name); its batch is left to the next run."""
    from pipeline.store.remote import Replica

    renew = Replica.renew_lease
    renewals: list[float] = []

    def refused_after_the_lease_is_taken(self: Replica) -> None:
        renewals.append(time.monotonic())
        if len(renewals) > 2:  # taken, renewed after the pull; then refused
            raise OSError("503 Slow Down")
        renew(self)

    monkeypatch.setattr(Replica, "renew_lease", refused_after_the_lease_is_taken)
    monkeypatch.setenv("PIPELINE_MIRRORS", str(tmp_path / "mirrors"))
    (tmp_path / "bucket").mkdir()
    url = f"file://{tmp_path}/bucket/out"
    with session_sim.started_over(batch_latency_s=60.0) as simulator:  # it outlasts the test
        job = batch_job(tmp_path, 12, job={"output": url, "fold_s": 1})
        done = cli("run", str(job), "--base-url", simulator.base_url, "--no-progress")
        listed = urllib.request.urlopen(simulator.base_url + "/v1/messages/batches").read()
        created = len(orjson.loads(listed)["data"])
    assert done.returncode == 6, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("pipeline: output ") and "lease could not be renewed" in line
    assert "1 batch(es) left running on the server: the next run collects them" in line
    assert created == 1  # and none after the stop
    assert renewals[-1] - renewals[0] < 10  # within the 3 s lease, not the batch's 60 s
