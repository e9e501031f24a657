"""`pipeline estimate` on an output directory with batches sent and not yet collected: their
rows are bought already, not "to send" (a user deciding whether to run again would otherwise
think they pay twice)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.batch.book import BatchBook, Status
from pipeline.errors import BatchesInProgress
from pipeline.simulator.process import SimulatorProcess
from tests.e2e import label_job, run_cli
from tests.test_batch_e2e import WORDS, batch_job, reviews, run

NOTHING = "cost online    $0.0000 .. $0.0000"
COST_LINES = ("input tokens", "output tokens", "cost online", "cost batch")


@pytest.fixture(scope="module")
def sim() -> Any:
    with SimulatorProcess(batch_latency_s=0.2) as simulator:
        yield simulator


def estimate(job: Path) -> str:
    done = run_cli("estimate", str(job))
    assert done.returncode == 0, done.stderr
    return done.stdout


def line(text: str, start: str) -> str:
    return next(x for x in text.splitlines() if x.startswith(start))


def intent(out: Path, rows: list[int], base_url: str) -> Any:
    return BatchBook(out).write_intent(
        rows, [1] * len(rows), Decimal("0.01"), base_url=base_url,
        api_key_env="AISA_API_KEY", auth="bearer", anthropic_version="2023-06-01",
    )  # fmt: skip


def test_rows_in_batches_not_yet_collected_are_not_to_send(sim: Any, tmp_path: Path) -> None:
    sim.reset()
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
    text = estimate(job)
    assert line(text, "t: ").startswith("t: 30 rows, 10 done, 5 to send")
    worst = first.intent.worst + Decimal("0.02")
    assert line(text, "in batches").startswith(
        f"in batches     15 rows in 3 batches not yet collected, not in the costs above: "
        f"at most ${worst:,.4f}"
    )
    assert f"`pipeline run {job} --batch` collects them" in text
    # the cost is that of rows 25..29 alone: the same estimate as a job of only those rows
    alone = tmp_path / "alone"
    alone.mkdir()
    texts = [f"{WORDS[i % len(WORDS)]} product number {i}" for i in range(25, 30)]
    sections = {"api": {"mode": "batch"}, "limits": {"timeout_s": 3}}
    expected = estimate(label_job(alone, reviews(alone / "in.csv", 5, texts), **sections))
    assert line(expected, "t: ").startswith("t: 5 rows, 0 done, 5 to send")
    for start in COST_LINES:
        assert line(text, start) == line(expected, start)


def test_a_detached_batch_is_not_to_send_and_once_collected_is_done(
    sim: Any, tmp_path: Path
) -> None:
    sim.reset()
    job = batch_job(tmp_path, 20)
    before = estimate(job)
    assert "\nin batches" not in before and line(before, "t: ").endswith("20 to send")
    assert line(before, "cost online") != NOTHING
    with pytest.raises(BatchesInProgress):
        run(job, sim.base_url, detach=True)
    detached = estimate(job)
    assert line(detached, "t: ") == "t: 20 rows, 0 done, 0 to send"
    assert line(detached, "in batches").startswith("in batches     20 rows in 1 batch not yet")
    assert line(detached, "cost online") == NOTHING
    run(job, sim.base_url)  # collects
    collected = estimate(job)
    assert line(collected, "t: ") == "t: 20 rows, 20 done, 0 to send"
    assert "\nin batches" not in collected
