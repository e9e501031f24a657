"""Under pressure, end to end against the simulator: a gateway's cap on requests in flight,
an outage window, an outage that outlasts the patience, and a stream with a corrupted
event. Counted from the simulator's ledger and stats."""

from __future__ import annotations

import polars as pl

from tests.e2e import label_job
from tests.test_streaming_e2e import REPLY, run_rows


def texts(path, n: int) -> None:
    pl.DataFrame(
        {"id": [f"k{i:04d}" for i in range(n)], "text": [f"row {i}: works well" for i in range(n)]}
    ).write_csv(path)


def run(cli, job, sim, *extra: str):
    return cli("run", str(job), "--base-url", sim.base_url, "--no-progress", *extra)


def test_a_cap_below_the_jobs_concurrency_settles_at_the_cap(tmp_path, cli, session_sim):
    texts(tmp_path / "in.csv", 150)
    job = label_job(tmp_path, tmp_path / "in.csv", limits={"concurrency": 32, "max_retries": 2})
    with session_sim.started_over(max_concurrency=5, latency_ms=300) as capped:
        done = run(cli, job, capped)
        stats = capped.stats()
        ledger = capped.ledger()
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["status"].to_list() == ["ok"] * 150  # 429s used up no row's 2 retries
    refused = stats["refused"]["concurrency"]
    # the first burst of 32 (27 over the cap) is the only storm: then a few probes at most
    assert refused <= (32 - 5) + 3, stats
    assert "requests in flight settled at 5 after 429s" in done.stderr
    # settled and busy: in the second half of the run every wave fills the cap's 5 slots
    # (answers of one wave are billed one by one, so a wave counts down 5, 4, ... 1)
    later = [e["in_flight"] for e in ledger[len(ledger) // 2 :]]
    assert later.count(5) >= len(later) // 5 - 1 and max(later) == 5


def test_an_outage_window_costs_no_rows_and_few_requests(tmp_path, cli, session_sim):
    texts(tmp_path / "in.csv", 400)
    job = label_job(tmp_path, tmp_path / "in.csv", limits={"concurrency": 16, "max_retries": 3})
    with session_sim.started_over(latency_ms=50, outage_after_s=1.0, outage_for_s=6.0) as down:
        done = run(cli, job, down)
        stats = down.stats()
        ledger = down.ledger()
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["status"].unique().to_list() == ["ok"]  # nobody's retries burnt by it
    assert stats["refused"]["outage"] < 60, stats  # one probe at a time, not 16 x backoff
    end = stats["outage"]["end_ts"]
    assert any(end < entry["ts"] < end + 5 for entry in ledger)  # back within 5 s of its end
    assert "sending one probe at a time" in done.stderr


def test_an_outage_longer_than_the_patience_stops_with_rows_to_do(tmp_path, cli, session_sim):
    texts(tmp_path / "in.csv", 60)
    job = label_job(
        tmp_path, tmp_path / "in.csv", limits={"concurrency": 4, "rate_limit_patience_s": 2}
    )
    with session_sim.started_over(latency_ms=20) as down:
        down.outage(for_s=8.0)  # longer than the 2 s patience, and than the run that stops
        stopped = run(cli, job, down)
        assert stopped.returncode == 4, stopped.stderr
        assert "has not answered successfully for" in stopped.stderr
        assert "run again to resume" in stopped.stderr.strip().splitlines()[-1]
        out = pl.read_parquet(tmp_path / "out" / "results.parquet")
        assert out.filter(pl.col("status") == "error").height == 0  # rows to do, not errors
        down.outage(for_s=0.0)  # the API is back (the window ends now, no waiting it out)
        assert not down.stats()["outage"]["active"]
        again = run(cli, job, down)
    assert again.returncode == 0, again.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["status"].to_list() == ["ok"] * 60


def test_a_stream_with_a_corrupted_middle_event_is_sent_again_never_ok_with_words_missing(
    tmp_path, sim, cli
):
    rows = [
        f"[[sim:reply={REPLY}]] row 0 [[sim:corrupt_event_first=1]]",  # whole the second time
        f"[[sim:reply={REPLY}]] row 1 [[sim:corrupt_event_at=3]]",  # never whole
    ]
    out = run_rows(
        cli,
        tmp_path,
        sim,
        rows,
        extract={"kind": "text", "choices": []},
        request={"prompt": "{text}", "max_tokens": 30_000},
        limits={"max_retries": 2},
    )
    first, second = out.rows(named=True)
    assert (first["status"], first["response_text"], first["attempts"]) == ("ok", REPLY, 2)
    assert (second["status"], second["error_type"]) == ("error", "malformed_answer")
    assert second["http_status"] == 200 and second["attempts"] == 3
    assert "does not parse" in second["error_message"]
