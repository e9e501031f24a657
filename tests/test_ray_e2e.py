"""`pipeline run --ray` on one local Ray cluster (num_cpus=2, the session's `cluster`)
against the simulator in its own process: results equal to a local run, one rate limit for
every worker, a killed worker or driver re-charging at most what was in flight."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest

ray = pytest.importorskip("ray")

from pipeline.api import run_job  # noqa: E402
from pipeline.ray.actor import NAMESPACE, actor_name  # noqa: E402
from pipeline.simulator.process import SimulatorProcess  # noqa: E402
from tests.e2e import (  # noqa: E402
    Cluster,
    label_job,
    start_cli,
    tagged_processes,
    wait_for,
)

VOLATILE = ["finished_at", "latency_ms", "request_id", "attempts"]


# Real processes (drivers, Ray's); under pytest-xdist the modules on the session's cluster
# are one unit of work (conftest's RAY_SHARED): one worker, one test at a time on it.
pytestmark = pytest.mark.process


ODD_CELLS = ["NA", "null", "N/A", " 007 ", "1.50", "true", 'multi\nline, "quoted"', "#N/A"]


def reviews(tmp: Path, n: int) -> Path:
    """Reviews, some of them cells a reader that guesses would change (null markers,
    numbers, booleans, a quoted line break)."""
    texts = [f"{'great' if i % 3 else 'awful'} product number {i}" for i in range(n)]
    texts[: len(ODD_CELLS)] = ODD_CELLS[:n]
    path = tmp / "in.csv"
    pl.DataFrame({"id": [f"k{i:04d}" for i in range(n)], "text": texts}).write_csv(path)
    return path


def results(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "results.parquet").drop(VOLATILE)


TAG = f"pipeline-test-{uuid.uuid4()}"  # in the environment of the Ray processes we start


def stop_ray() -> None:
    """Stop the processes of the local clusters this module's children started (found by
    the tag in their environment), and no one else's."""
    for pid in tagged_processes(TAG):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def shard_journal_lines(out: Path) -> int:
    """Answers journaled so far in the shards' own output directories."""
    count = 0
    for journal in (out / "ray").glob("shard-*/journal*"):
        try:
            count += journal.read_bytes().count(b"\n")
        except OSError:
            continue
    return count


def billed(simulator: SimulatorProcess) -> Counter[str]:
    return Counter(e["prompt_sha256"] for e in simulator.ledger())


def lost_bills(simulator: SimulatorProcess, out: Path) -> list[float]:
    """When each answer the output does not keep was billed: paid, then lost to a kill (a
    row is re-charged once for each). Checked against the moment of the kill."""
    kept = set(pl.read_parquet(out / "results.parquet")["request_id"].to_list())
    return sorted(e["ts"] for e in simulator.ledger() if e["request_id"] not in kept)


def assert_only_in_flight_recharged(
    simulator: SimulatorProcess, out: Path, killed_at: float, dead_by: float
) -> None:
    """Every row billed twice was billed twice because its first answer was in flight at
    the kill: billed no earlier than just before it (the journal is written as each answer
    arrives) and no later than one latency after the killed processes were gone."""
    lost = lost_bills(simulator, out)
    twice = sum(n - 1 for n in billed(simulator).values())
    assert twice == len(lost)  # every re-charge is a lost answer, and only those
    offsets = [f"{ts - killed_at:+.2f}" for ts in lost]
    print(f"re-charged {twice}, billed at {', '.join(offsets)} s from the kill")  # -s shows
    assert all(killed_at - 0.5 <= ts <= dead_by + 1.0 for ts in lost), (killed_at, lost)


def exited(pid: int) -> bool:
    """Every thread of `pid` gone or a zombie. Its main thread alone a zombie is not enough:
    the process's other threads, still exiting, hold its files (a shard's lock) a while."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks]
    except (OSError, IndexError):
        return True
    return all(state in ("Z", "X") for state in states)


def shard_workers_gone(cluster: Cluster, workers: list[int]) -> float:
    """Wait until the cluster has no ShardWorker process left and `workers` (the killed
    driver's, their pids taken before the kill) have exited: Ray stops them when it notices
    the driver is gone, and a worker's title may change before its process (holding its
    shard's lock) is gone. The time they were gone by."""
    wait_for(
        lambda: not tagged_processes(cluster.tag, b"ShardWorker") and all(map(exited, workers)),
        "the workers stopped",
    )
    return time.time()


def test_a_killed_driver_resumes_with_the_same_command(
    tmp_path: Path, cli: Any, cluster: Cluster
) -> None:
    with SimulatorProcess(latency_ms=100.0) as simulator:
        job = label_job(tmp_path, reviews(tmp_path, 120), limits={"requests_per_minute": 4800})
        on_cluster = {"RAY_ADDRESS": cluster.address}  # the session's cluster, not one's own
        first = start_cli(job, simulator.base_url, "--ray", "--workers", "2", env=on_cluster)
        wait_for(lambda: shard_journal_lines(tmp_path / "out") >= 20, "rows journaled in shards")
        workers = tagged_processes(cluster.tag, b"ShardWorker")
        killed_at = time.time()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        dead_by = shard_workers_gone(cluster, workers)  # the killed driver's workers
        # the same command again, in this process (the killed one is the process that
        # matters; this one's start-up would only add an interpreter's and Ray's imports)
        again = cli(
            "run", str(job), "--base-url", simulator.base_url, "--no-progress", "--ray",
            "--workers", "2", env=on_cluster,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        table = pl.read_parquet(tmp_path / "out" / "results.parquet")
        assert table.height == 120 and (table["status"] == "ok").all()
        assert_only_in_flight_recharged(simulator, tmp_path / "out", killed_at, dead_by)


def test_after_a_killed_driver_status_pilot_and_a_local_resume_see_its_shards(
    tmp_path: Path, cli: Any, cluster: Cluster
) -> None:
    """Issue 21: the shards' rows counted by status, never bought by a pilot, taken in by
    a resume without --ray; every row billed once but those in flight at the kill."""
    with SimulatorProcess(latency_ms=100.0) as simulator:
        job = label_job(tmp_path, reviews(tmp_path, 120), limits={"requests_per_minute": 4800})
        on_cluster = {"RAY_ADDRESS": cluster.address}  # the session's cluster, not one's own
        first = start_cli(job, simulator.base_url, "--ray", "--workers", "2", env=on_cluster)
        # Ray started (slowly on a busy machine), rows being answered
        wait_for(lambda: len(simulator.ledger()) >= 40, "40 answers", timeout=120.0)
        workers = tagged_processes(cluster.tag, b"ShardWorker")
        killed_at = time.time()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        dead_by = shard_workers_gone(cluster, workers)
        # the simulator bills what was in flight at the kill as it answers
        wait_for(lambda: simulator.stats()["in_flight"] == 0, "the requests in flight answered")
        paid = len(simulator.ledger())
        status = cli("status", str(tmp_path / "out"))
        assert status.returncode == 0, status.stderr
        found = re.search(r"([\d,]+) ok", status.stdout)
        ok = int(found.group(1).replace(",", "")) if found else 0
        assert 0 < ok <= paid and paid - ok <= 8  # all but those in flight (concurrency 8)
        pilot = cli("estimate", str(job), "--pilot", "10", "--base-url", simulator.base_url)
        assert pilot.returncode == 0, pilot.stderr
        assert f"{ok:,} done" in pilot.stdout and len(simulator.ledger()) == paid + 10
        again = cli("run", str(job), "--base-url", simulator.base_url)
        assert again.returncode == 0, again.stderr
        table = pl.read_parquet(tmp_path / "out" / "results.parquet")
        assert table.height == 120 and (table["status"] == "ok").all()
        assert_only_in_flight_recharged(simulator, tmp_path / "out", killed_at, dead_by)


@pytest.mark.usefixtures("cluster")
def test_a_ray_run_equals_a_local_run_and_holds_one_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_sim: SimulatorProcess
) -> None:
    # read in Ray tasks of 60 rows, as an input of millions is (the other tests' few rows
    # are read by the driver itself)
    monkeypatch.setattr("pipeline.ray.read.TASK_ROWS", 60)
    # the local run against a simulator of its own, beside the Ray run (the same answers:
    # the simulator's are its prompts'), each through its own 2400 rpm limit
    with (
        session_sim.started_over(latency_ms=50.0, rpm=2400) as simulator,
        SimulatorProcess(latency_ms=50.0, rpm=2400) as alone,
    ):
        inputs = reviews(tmp_path, 120)
        local = label_job(tmp_path, inputs, limits={"requests_per_minute": 2400})
        on_ray: list[Any] = []
        ray_run = threading.Thread(
            target=lambda: on_ray.append(
                run_job(
                    local, output=tmp_path / "ray_out", base_url=simulator.base_url,
                    api_key="sk-test-key", show_progress=False, ray="local", workers=2,
                )
            )
        )  # fmt: skip
        ray_run.start()
        try:
            run_job(local, base_url=alone.base_url, api_key="sk-test-key", show_progress=False)
        finally:
            ray_run.join(timeout=180)
        prompts = billed(alone)
        assert on_ray and on_ray[0].rows_ok == 120
        assert results(tmp_path / "ray_out").equals(results(tmp_path / "out"))
        assert billed(simulator) == prompts  # the same prompts, cell for cell
        assert simulator.stats()["refused"]["rate_limit"] == 0  # 2 workers, one limit
        assert max(billed(simulator).values()) == 1


@pytest.mark.usefixtures("cluster")
def test_a_killed_worker_loses_only_its_requests_in_flight(tmp_path: Path) -> None:
    with SimulatorProcess(latency_ms=100.0) as simulator:
        job = label_job(tmp_path, reviews(tmp_path, 120), limits={"requests_per_minute": 4800})
        done: list[Any] = []
        thread = threading.Thread(
            target=lambda: done.append(
                run_job(
                    job,
                    base_url=simulator.base_url,
                    api_key="sk-test-key",
                    show_progress=False,
                    ray="local",
                    workers=2,
                )
            )
        )
        thread.start()
        wait_for(lambda: shard_journal_lines(tmp_path / "out") >= 20, "the workers sending")
        name = f"{actor_name(tmp_path / 'out')}-shard-0-0"
        killed_at = time.time()
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
        dead_by = time.time()
        thread.join(timeout=120)
        assert done and done[0].rows_ok == 120 and done[0].cost_usd > 0
        table = pl.read_parquet(tmp_path / "out" / "results.parquet")
        assert table.height == 120 and (table["status"] == "ok").all()
        assert_only_in_flight_recharged(simulator, tmp_path / "out", killed_at, dead_by)
        assert len(lost_bills(simulator, tmp_path / "out")) <= 8  # its share of concurrency 8


@pytest.mark.usefixtures("cluster")
def test_retry_errors_on_ray_sends_the_error_rows_again(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    inputs = reviews(tmp_path, 12)
    frame = pl.read_csv(inputs, infer_schema=False)
    texts = frame["text"].to_list()
    texts[5] = "broken [[sim:status=400]]"  # refused every time: an error row
    frame.with_columns(pl.Series("text", texts)).write_csv(inputs)
    simulator = sim
    job = label_job(tmp_path, inputs)
    options: dict[str, Any] = {
        "base_url": simulator.base_url, "api_key": "sk-test-key", "show_progress": False,
        "ray": "local", "workers": 2,
    }  # fmt: skip
    first = run_job(job, **options)
    again = run_job(job, retry_errors=True, **options)
    assert (first.rows_ok, first.rows_error) == (11, 1)
    assert (again.rows_error, again.rows_before) == (1, 11)  # the error row, sent again
    assert again.requests >= 1


@pytest.mark.usefixtures("cluster")
def test_process_adds_the_result_columns_and_a_failing_row_is_an_error_row(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    from pipeline.ray import process

    simulator = sim
    job = label_job(tmp_path, reviews(tmp_path, 3))
    # skill 1: every label is the simulator's verdict, whatever the model's profile
    items = [{"id": f"d{i}", "text": f"great thing {i} [[sim:skill=1]]"} for i in range(9)]
    items[4]["text"] = "broken [[sim:status=400]]"
    ds = process(ray.data.from_items(items), job, api_key="sk-test-key",
                 base_url=simulator.base_url, workers=2)  # fmt: skip
    rows = sorted(ds.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == [f"d{i}" for i in range(9)]
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["error"] + ["ok"] * 4
    assert rows[4]["error_type"] == "invalid_request_error"
    assert all(r["label"] == "positive" for r in rows if r["status"] == "ok")
    assert all(r["cost_usd"] > 0 for r in rows if r["status"] == "ok")
