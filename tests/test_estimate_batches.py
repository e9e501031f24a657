"""`pipeline estimate` on an output directory with batches sent and not yet collected: their
rows are bought already, not "to send" (a user deciding whether to run again would otherwise
think they pay twice)."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.batch.book import BatchBook, Status
from pipeline.errors import BatchesInProgress
from pipeline.simulator.process import SimulatorProcess
from tests.e2e import label_job
from tests.test_batch_e2e import WORDS, batch_job, reviews, run

NOTHING = "cost online    $0.0000 .. $0.0000"
RANGE = re.compile(r"\$[\d,.]+ \.\. \$[\d,.]+")
COST_LINES = ("input tokens", "output tokens", "cost online", "cost batch")


@pytest.fixture
def sim(session_sim: SimulatorProcess) -> Any:
    """The session's simulator, started over with batches that end in 0.2 s."""
    with session_sim.started_over(batch_latency_s=0.2) as simulator:
        yield simulator


def estimate(cli: Any, job: Path) -> str:
    done = cli("estimate", str(job))
    assert done.returncode == 0, done.stderr
    return done.stdout


def line(text: str, start: str) -> str:
    return next(x for x in text.splitlines() if x.startswith(start))


def cost_range(text: str, start: str) -> str:
    """The `$low .. $high` of the line starting with `start`."""
    found = RANGE.search(line(text, start))
    assert found is not None, line(text, start)
    return found.group()


def estimate_of(cli: Any, directory: Path, rows: range) -> str:
    """The estimate of a batch job whose input is only the rows `rows` of batch_job's."""
    directory.mkdir()
    texts = [f"{WORDS[i % len(WORDS)]} product number {i}" for i in rows]
    sections = {"api": {"mode": "batch"}, "limits": {"timeout_s": 3}}
    path = reviews(directory / "in.csv", len(texts), texts)
    text = estimate(cli, label_job(directory, path, **sections))
    assert line(text, "t: ").startswith(f"t: {len(texts)} rows, 0 done, {len(texts)} to send")
    return text


def intent(out: Path, rows: list[int], base_url: str) -> Any:
    return BatchBook(out).write_intent(
        rows, [1] * len(rows), Decimal("0.01"), base_url=base_url,
        api_key_env="AISA_API_KEY", auth="bearer", anthropic_version="2023-06-01",
    )  # fmt: skip


def test_rows_in_batches_not_yet_collected_are_not_to_send(
    sim: Any, tmp_path: Path, cli: Any
) -> None:
    job = batch_job(tmp_path, 30)
    out = tmp_path / "out"
    run(job, sim.base_url, limit=10)  # rows 0..9 collected from batch 1
    book = BatchBook(out)
    (first,) = book.entries
    assert first.status is not None
    first.status.state = "ended"  # killed mid-collection, after every row was recorded
    book.save(first)
    intent(out, list(range(10, 20)), sim.base_url)  # its create unconfirmed
    third = intent(out, list(range(20, 25)), sim.base_url)
    third.status = Status(batch_id="msgbatch_elsewhere", state="in_progress")
    BatchBook(out).save(third)
    text = estimate(cli, job)
    assert line(text, "t: ").startswith("t: 30 rows, 10 done, 5 to send")
    assert line(text, "in batches").startswith(
        "in batches     15 rows in 3 batches not yet collected (not in the costs below): $"
    )
    assert line(text, "in batches").endswith(
        f"at batch prices; `pipeline run {job} --batch` collects them"
    )
    # rows 10..24 cost what the estimate of a job of only those rows says at batch prices
    bought = estimate_of(cli, tmp_path / "bought", range(10, 25))
    assert cost_range(bought, "cost batch") != "$0.0000 .. $0.0000"
    assert cost_range(text, "in batches") == cost_range(bought, "cost batch")
    # the cost is that of rows 25..29 alone: the same estimate as a job of only those rows
    expected = estimate_of(cli, tmp_path / "alone", range(25, 30))
    for start in COST_LINES:
        assert line(text, start) == line(expected, start)


def test_a_detached_batch_is_not_to_send_and_once_collected_is_done(
    sim: Any, tmp_path: Path, cli: Any
) -> None:
    job = batch_job(tmp_path, 20)
    before = estimate(cli, job)
    assert "\nin batches" not in before and line(before, "t: ").endswith("20 to send")
    assert line(before, "cost online") != NOTHING
    with pytest.raises(BatchesInProgress):
        run(job, sim.base_url, detach=True)
    detached = estimate(cli, job)
    assert line(detached, "t: ") == "t: 20 rows, 0 done, 0 to send"
    assert line(detached, "in batches").startswith("in batches     20 rows in 1 batch not yet")
    assert cost_range(detached, "in batches") == cost_range(before, "cost batch")
    assert line(detached, "cost online") == NOTHING
    run(job, sim.base_url)  # collects
    collected = estimate(cli, job)
    assert line(collected, "t: ") == "t: 20 rows, 20 done, 0 to send"
    assert "\nin batches" not in collected
