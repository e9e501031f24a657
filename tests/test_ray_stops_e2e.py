"""`pipeline run --ray` holds the job's concurrency for the whole cluster (counted by the
simulator's peak in flight), and stops as a local run does: SIGINT / SIGTERM finish the
requests in flight and write the results (exit 130 / 143), a worker that keeps dying is a
one-line stop (exit 4). The concurrency tests share the session's local cluster
(num_cpus=2); each signal test is a real `pipeline run` process (those with a cluster of
their own are in test_ray_own_cluster_e2e.py, in another unit of work: RAY_OWN)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

ray = pytest.importorskip("ray")

from pipeline.api import run_job  # noqa: E402
from pipeline.simulator.process import SimulatorProcess  # noqa: E402
from tests.e2e import (  # noqa: E402
    REPO,
    Cluster,
    label_job,
    tagged_processes,
    wait_for,
)
from tests.test_ray_e2e import TAG, reviews, stop_ray  # noqa: E402

# Real processes (drivers, Ray's); under pytest-xdist the modules on the session's cluster
# are one unit of work (conftest's RAY_SHARED): one worker, one test at a time on it.
pytestmark = pytest.mark.process


@pytest.mark.parametrize(
    ("concurrency", "asked", "workers", "said"),
    [(4, 2, 2, False), (4, 4, 4, False), (4, 6, 4, True), (4, 0, 1, False), (1, 3, 1, True)],
)
def test_workers_are_never_more_than_the_jobs_concurrency(
    concurrency: int, asked: int, workers: int, said: bool
) -> None:
    """--workers above the job's concurrency is said once and capped (each worker keeps a
    request in flight); at or below it, nothing is said."""
    from pipeline.ray.driver import worker_count

    told: list[str] = []
    assert worker_count(concurrency, asked, told.append) == workers
    assert len(told) == int(said)
    assert all("above the job's concurrency" in line for line in told)


@pytest.mark.usefixtures("cluster")
@pytest.mark.parametrize("workers", [2, 6])  # 6: capped at 4 workers, the concurrency
def test_the_cluster_never_has_more_in_flight_than_the_jobs_concurrency(
    tmp_path: Path, workers: int, capsys: Any, session_sim: SimulatorProcess
) -> None:
    with session_sim.started_over(latency_ms=150.0) as simulator:
        # 60 rows: each worker's shard lasts long enough (15 rows at 150 ms, one request at a
        # time of 4 workers) to meet the others' on a loaded machine, where Ray starts them
        # one after another (40 made a peak of 2 once, the workers barely overlapping)
        job = label_job(tmp_path, reviews(tmp_path, 60), limits={"concurrency": 4})
        summary = run_job(
            job, base_url=simulator.base_url, api_key="sk-test-key", show_progress=False,
            ray="local", workers=workers,
        )  # fmt: skip
        peak = simulator.stats()["max_in_flight"]
    assert summary.rows_ok == 60
    assert 3 <= peak <= 4, peak  # the concurrency used, never passed
    told = capsys.readouterr().err.count("above the job's concurrency")
    assert told == (1 if workers > 4 else 0)  # --workers 6: 4 workers, said once


@pytest.mark.usefixtures("cluster")
def test_an_outage_is_probed_one_attempt_at_a_time_for_the_whole_cluster(
    tmp_path: Path, session_sim: SimulatorProcess
) -> None:
    with session_sim.started_over(latency_ms=50.0, outage_after_s=1.0, outage_for_s=6.0) as down:
        limits = {"concurrency": 16, "max_retries": 3}
        job = label_job(tmp_path, reviews(tmp_path, 400), limits=limits)
        summary = run_job(
            job, base_url=down.base_url, api_key="sk-test-key", show_progress=False,
            ray="local", workers=4,
        )  # fmt: skip
        stats = down.stats()
    assert summary.rows_ok == 400  # nobody's retries burnt by it
    # near a local run's ~20 (its 16 in flight, then one probe at a time; ~35 here: workers
    # hear of the outage a moment later), not one outage a worker (67 before)
    assert stats["refused"]["outage"] <= 50, stats
    # said by the pool, not by each worker: once, or twice when an answer sent before the
    # outage comes back inside it (a success ends the outage; the next failures declare it)
    assert 1 <= sum("one probe at a time" in line for line in summary.adjustments) <= 2


@pytest.mark.usefixtures("cluster")
def test_process_keeps_the_jobs_concurrency_across_its_actors(
    tmp_path: Path, session_sim: SimulatorProcess
) -> None:
    from pipeline.ray import process

    # two actors (each a process: 2 CPU-s to start) and an odd concurrency: actors each
    # taking the whole of it would have 6 in flight, and shares rounded up 4
    with session_sim.started_over(latency_ms=150.0) as simulator:
        job = label_job(tmp_path, reviews(tmp_path, 3), limits={"concurrency": 3})
        items = [{"id": f"d{i}", "text": f"great thing {i}"} for i in range(64)]
        ds = process(ray.data.from_items(items), job, api_key="sk-test-key",
                     base_url=simulator.base_url, workers=2, batch_size=8)  # fmt: skip
        rows = ds.take_all()
        peak = simulator.stats()["max_in_flight"]
    assert len(rows) == 64 and all(r["status"] == "ok" for r in rows)
    assert peak <= 3, peak


def start_driver(
    job: Path, base_url: str, *extra: str, cluster: Cluster | None = None, workers: int = 2
) -> subprocess.Popen[str]:
    """`pipeline run --ray` in a session of its own: a signal to its process group is a
    terminal's Ctrl-C (Ray's processes are in the group too, when the run starts its own
    local cluster); on `cluster`, the session's, through RAY_ADDRESS."""
    env = {**os.environ, "AISA_API_KEY": "sk-test-key", "T": TAG}
    if cluster is not None:
        env["RAY_ADDRESS"] = cluster.address
    command = [sys.executable, "-m", "pipeline", "run", str(job), "--base-url", base_url]
    return subprocess.Popen(
        [*command, "--no-progress", "--ray", "--workers", str(workers), *extra], cwd=REPO, env=env,
        text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip


def ours(stderr: str) -> list[str]:
    """stderr without nothing but our lines: no Ray warnings, no traceback."""
    lines = stderr.strip().splitlines()
    noise = ("Traceback", "ActorDiedError", "WARNING", "SIGTERM received", "blocking ray.get")
    assert not any(word in stderr for word in noise), stderr
    return lines


def assert_every_paid_answer_kept(simulator: SimulatorProcess, out: Path) -> pl.DataFrame:
    table = pl.read_parquet(out / "results.parquet")
    paid = {e["request_id"] for e in simulator.ledger()}
    assert paid <= set(table["request_id"].to_list())  # the requests in flight finished
    assert (table["status"] == "ok").all() and table.height == len(paid)
    return table


def stop_by_signal(tmp_path: Path, number: int, cluster: Cluster | None) -> None:
    """A `pipeline run --ray` stopped by `number` with requests in flight: on a cluster of
    its own (None) the signal goes to its process group, as a terminal's Ctrl-C reaches the
    driver and the cluster it started; on `cluster` to the driver alone. Shared with
    test_ray_own_cluster_e2e.py, where the own-cluster case runs."""
    group = cluster is None
    with SimulatorProcess(latency_ms=600.0) as simulator:  # in flight at the signal
        job = label_job(tmp_path, reviews(tmp_path, 300), limits={"concurrency": 4})
        driver = start_driver(job, simulator.base_url, cluster=cluster)
        try:
            wait_for(lambda: len(simulator.ledger()) >= 4, "answers")
            wait_for(lambda: simulator.stats()["in_flight"] >= 2, "requests in flight")
            if group:
                os.killpg(driver.pid, number)  # Ctrl-C: the driver and Ray's processes
            else:
                driver.send_signal(number)
            _, stderr = driver.communicate(timeout=120)
        finally:
            driver.kill()
            stop_ray()
        lines = ours(stderr)
        assert driver.returncode == 128 + number, stderr
        assert lines[-1].startswith(f"pipeline: stopped by {signal.Signals(number).name}")
        table = assert_every_paid_answer_kept(simulator, tmp_path / "out")
    assert 4 <= table.height < 300


@pytest.mark.parametrize(("number", "group"), [(signal.SIGTERM, False)])
def test_a_signal_stops_a_ray_run_as_it_stops_a_local_one(
    tmp_path: Path, number: int, group: bool, cluster: Cluster
) -> None:
    # SIGTERM the driver alone, which may as well run on the session's cluster (Ctrl-C to a
    # run with a cluster of its own: test_ray_own_cluster_e2e.py)
    stop_by_signal(tmp_path, number, None if group else cluster)


def test_a_worker_dying_past_its_restarts_is_a_one_line_stop(
    tmp_path: Path, cluster: Cluster
) -> None:
    with SimulatorProcess(latency_ms=100.0) as simulator:
        job = label_job(
            tmp_path, reviews(tmp_path, 400),
            limits={"concurrency": 4, "requests_per_minute": 600},
        )  # fmt: skip
        # one worker: its shard's restarts are the point (each start of a worker costs CPU)
        driver = start_driver(job, simulator.base_url, cluster=cluster, workers=1)
        kills = 0
        try:
            while driver.poll() is None:  # every worker, each time a new one starts
                for pid in tagged_processes(cluster.tag, b"ShardWorker"):
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                time.sleep(0.1)  # a poll for the next worker: each one killed as it starts
            _, stderr = driver.communicate(timeout=60)
        finally:
            driver.kill()
            stop_ray()
    lines = ours(stderr)
    assert driver.returncode == 4, stderr
    assert kills >= 4
    (reason,) = [line for line in lines if line.startswith("pipeline:")]
    assert "died 4 times" in reason and "resume" in reason
    table = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert (table["status"] == "ok").all()  # the rows finished, kept


def test_a_worker_killed_past_the_grace_period_is_said_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # no cluster: the supervisor's kill with ray.kill recorded, its notes read
    from pipeline.ray import supervise

    killed: list[str] = []
    monkeypatch.setattr(supervise.ray, "kill", lambda worker, no_restart: killed.append(worker))
    notes: list[str] = []
    progress = type("Notes", (), {"note": lambda self, text: notes.append(text)})()
    watch = supervise.Supervisor(None, [None, None], None, progress, None, Path())
    watch.workers, watch.running = {0: "worker-0", 1: "worker-1"}, {"ref-1": 1}
    watch._kill_running()
    watch._kill_running()  # the loop goes round until the killed worker's run ends
    assert killed == ["worker-1", "worker-1"]  # only the one still running, each time
    assert len(notes) == 1 and notes[0].startswith("the worker of shard 1 was still running")
