"""Crash safety: kill the real CLI, build half-finished states on disk, resume, count."""

from __future__ import annotations

import hashlib
import random
import signal
from collections import Counter
from pathlib import Path

import orjson
import polars as pl
import pyarrow.parquet as pq
import pytest

from tests.e2e import label_job, start_cli, wait_for

PROMPT = "Review: {}\nAnswer with one word: positive, negative or neutral."


def inputs(path: Path, n: int) -> list[str]:
    texts = [f"row {i}: it {'works great' if i % 2 else 'broke fast'}" for i in range(n)]
    pl.DataFrame({"id": [f"k{i:05d}" for i in range(n)], "text": texts}).write_csv(path)
    return texts


def results(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "results.parquet")


def assert_every_row_once_with_its_own_answer(
    out: pl.DataFrame, texts: list[str], ledger: list[dict]
) -> None:
    assert out["id"].to_list() == [f"k{i:05d}" for i in range(len(texts))]
    assert out["status"].unique().to_list() == ["ok"]
    by_request = {entry["request_id"]: entry for entry in ledger}
    for row in out.iter_rows(named=True):
        expected = hashlib.sha256(PROMPT.format(row["text"]).encode()).hexdigest()
        assert by_request[row["request_id"]]["prompt_sha256"] == expected


@pytest.mark.process
def test_sigkill_three_times_then_resume_loses_nothing(tmp_path, cli, session_sim):
    # 3 kills, each at most 60 answers and 16 in flight on: 228 rows at most; 300 leave the
    # last run rows to do
    texts = inputs(tmp_path / "in.csv", 300)
    job = label_job(tmp_path, tmp_path / "in.csv", limits={"concurrency": 16})
    rng = random.Random(11)
    kills = 0
    with session_sim.started_over(latency_ms=150, latency_jitter_ms=50) as sim:
        for _ in range(3):
            target = len(sim.ledger()) + rng.randint(10, 60)  # a kill at a random point
            child = start_cli(job, sim.base_url)
            wait_for(lambda t=target: len(sim.ledger()) >= t, f"{target} answers")
            child.send_signal(signal.SIGKILL)
            child.wait()
            kills += 1
        finished = cli("run", str(job), "--base-url", sim.base_url)
        ledger = sim.ledger()
    assert finished.returncode == 0, finished.stderr
    assert "from earlier runs" in finished.stderr
    assert not finished.stderr.startswith("t: 0 ok")  # the kills came before the end
    assert_every_row_once_with_its_own_answer(results(tmp_path), texts, ledger)
    billed = Counter(entry["prompt_sha256"] for entry in ledger)
    assert len(billed) == 300
    twice = sum(count - 1 for count in billed.values())
    assert twice <= kills * 16  # at most what was in flight at each kill


@pytest.mark.process
def test_sigint_then_resume_bills_no_row_twice(tmp_path, cli, session_sim):
    texts = inputs(tmp_path / "in.csv", 300)
    job = label_job(tmp_path, tmp_path / "in.csv", limits={"concurrency": 16})
    with session_sim.started_over(latency_ms=80) as sim:
        child = start_cli(job, sim.base_url)
        wait_for(lambda: len(sim.ledger()) >= 20, "answers")
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=60)
        assert child.returncode == 130, stderr
        assert "run the same command to resume" in stderr
        partial = results(tmp_path)
        assert 0 < partial.height < 300
        status = cli("status", str(tmp_path / "out"))
        assert f"{partial.height:,} ok" in status.stdout and "complete:  no" in status.stdout
        again = cli("run", str(job), "--base-url", sim.base_url)
        ledger = sim.ledger()
    assert again.returncode == 0, again.stderr
    assert_every_row_once_with_its_own_answer(results(tmp_path), texts, ledger)
    assert max(Counter(e["prompt_sha256"] for e in ledger).values()) == 1


def finished_run(cli, tmp_path: Path, sim, n: int = 40) -> tuple[Path, list[str]]:
    texts = inputs(tmp_path / "in.csv", n)
    job = label_job(tmp_path, tmp_path / "in.csv")
    assert cli("run", str(job), "--base-url", sim.base_url).returncode == 0
    return job, texts


def journal_lines(part: Path) -> list[bytes]:
    rows = pq.read_table(part).to_pylist()
    for row in rows:
        row["finished_at"] = int(row["finished_at"].timestamp() * 1_000_000)
    return [orjson.dumps(row) + b"\n" for row in rows]


def test_torn_journal_record_is_skipped_and_that_row_sent_again(tmp_path, sim, cli):
    job, texts = finished_run(cli, tmp_path, sim)
    out = tmp_path / "out"
    [part] = sorted((out / "parts").glob("part-*.parquet"))
    lines = journal_lines(part)
    part.unlink()  # the state of a killed run: its rows only in the journal, the last torn
    (out / "journal.jsonl").write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    sim.reset()
    again = cli("run", str(job), "--base-url", sim.base_url)
    assert again.returncode == 0, again.stderr
    assert "torn last record" in again.stderr
    assert sim.stats()["requests"] == 1  # only the torn row
    torn_text = orjson.loads(lines[-1])["text"]
    [resent] = sim.ledger()
    assert resent["prompt_sha256"] == hashlib.sha256(PROMPT.format(torn_text).encode()).hexdigest()
    out_rows = results(tmp_path)
    assert out_rows["text"].to_list() == texts and out_rows["status"].unique().to_list() == ["ok"]


def test_crash_between_compaction_steps_resumes_without_resending(tmp_path, sim, cli):
    job, _ = finished_run(cli, tmp_path, sim)
    out = tmp_path / "out"
    [part] = sorted((out / "parts").glob("part-*.parquet"))
    lines = journal_lines(part)
    # part 1 written but its sealed journal not yet removed; part 2's journal sealed, not
    # yet written; a part's temporary file left half-written
    (out / "journal-000001.sealed").write_bytes(b"".join(lines[:30]))
    (out / "journal-000002.sealed").write_bytes(b"".join(lines[30:]))
    (out / "parts" / ".part-000002.parquet.tmp").write_bytes(b"PAR1 half a file")
    pl.read_parquet(part).head(30).write_parquet(part)  # part 1 as the sealed journal had it
    sim.reset()
    again = cli("run", str(job), "--base-url", sim.base_url)
    assert again.returncode == 0, again.stderr
    assert sim.stats()["requests"] == 0
    assert results(tmp_path).height == 40 and results(tmp_path)["id"].is_unique().all()
    assert not list(out.glob("journal-*.sealed"))


def test_crash_while_writing_results_resumes_cleanly(tmp_path, sim, cli):
    job, _ = finished_run(cli, tmp_path, sim)
    out = tmp_path / "out"
    (out / "results.parquet").unlink()
    (out / ".results.parquet.tmp").write_bytes(b"PAR1 torn")
    sim.reset()
    again = cli("run", str(job), "--base-url", sim.base_url)
    assert again.returncode == 0, again.stderr
    assert sim.stats()["requests"] == 0
    assert results(tmp_path)["id"].to_list() == [f"k{i:05d}" for i in range(40)]


def test_changed_template_is_refused_and_fresh_keeps_the_old_results(tmp_path, sim, cli):
    finished_run(cli, tmp_path, sim)
    changed = label_job(tmp_path, tmp_path / "in.csv", request={"prompt": "Sentiment of: {text}"})
    refused = cli("run", str(changed), "--base-url", sim.base_url)
    assert refused.returncode == 2
    assert "[request] prompt changed" in refused.stderr and "--fresh" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    limits_only = label_job(tmp_path, tmp_path / "in.csv", limits={"concurrency": 3})
    assert cli("run", str(limits_only), "--base-url", sim.base_url).returncode == 0
    changed = label_job(tmp_path, tmp_path / "in.csv", request={"prompt": "Sentiment of: {text}"})
    fresh = cli("run", str(changed), "--base-url", sim.base_url, "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    [old] = tmp_path.glob("out.old-*")
    assert pl.read_parquet(old / "results.parquet").height == 40  # paid work kept aside
    assert results(tmp_path).height == 40


def test_retry_errors_resends_exactly_the_error_rows(tmp_path, cli, sim):
    texts = inputs(tmp_path / "in.csv", 80)
    job = label_job(tmp_path, tmp_path / "in.csv", limits={"max_retries": 0})
    # one server, one after the other: `sim` started over with faults for the first run,
    # then back to its own settings (an empty ledger) for `clean`
    with sim.started_over(fail_500=0.25, seed=5) as faulty:
        assert cli("run", str(job), "--base-url", faulty.base_url).returncode == 0
    first = results(tmp_path)
    failed = first.filter(pl.col("status") == "error")
    assert failed.height > 5 and set(failed["http_status"]) == {500}
    clean = sim
    plain = cli("run", str(job), "--base-url", clean.base_url)
    assert plain.returncode == 0 and clean.stats()["requests"] == 0  # errors are final
    again = cli("run", str(job), "--base-url", clean.base_url, "--retry-errors")
    assert again.returncode == 0, again.stderr
    assert clean.stats()["requests"] == failed.height
    resent = {e["prompt_sha256"] for e in clean.ledger()}
    assert resent == {hashlib.sha256(PROMPT.format(t).encode()).hexdigest() for t in failed["text"]}
    final = results(tmp_path)
    assert final["status"].unique().to_list() == ["ok"]
    ok_before = first.filter(pl.col("status") == "ok")
    kept = final.join(ok_before.select("id", "request_id"), on="id")
    assert (kept["request_id"] == kept["request_id_right"]).all()  # ok rows untouched
    assert len(texts) == final.height


def test_many_runs_keep_few_part_files(tmp_path, sim):
    from pipeline import run_job

    texts = inputs(tmp_path / "in.csv", 45)
    job = label_job(tmp_path, tmp_path / "in.csv")
    for limit in range(1, 46):  # 45 runs, each finishing one more row: a part file each
        summary = run_job(
            job, base_url=sim.base_url, limit=limit, api_key="sk-test", show_progress=False
        )
        assert summary.rows_ok == 1
    parts = list((tmp_path / "out" / "parts").glob("part-*.parquet"))
    assert len(parts) <= 33
    assert results(tmp_path)["text"].to_list() == texts


@pytest.mark.process
def test_sigterm_stops_gracefully_with_143(tmp_path, session_sim):
    inputs(tmp_path / "in.csv", 200)
    job = label_job(tmp_path, tmp_path / "in.csv", limits={"concurrency": 8})
    with session_sim.started_over(latency_ms=100) as slow:
        child = start_cli(job, slow.base_url)
        wait_for(lambda: len(slow.ledger()) >= 10, "answers")
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=60)
        billed = len(slow.ledger())
    assert child.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr
    assert results(tmp_path).height == billed  # every request in flight was finished and kept
