"""`pipeline run --ray` with a local cluster of its own (no RAY_ADDRESS: the run starts
one and stops it): Ctrl-C stops it as it stops a local run, a second Ctrl-C does not wait
for the requests in flight; and the one-line errors of a run that gets no cluster.

None of them uses the session's `cluster`, so this module is not in that cluster's unit
of work (conftest's RAY_SHARED): it runs on another pytest-xdist worker, beside it
(RAY_OWN). Each cluster a run starts is its own (ray.init without an address picks free
ports and a session directory of its own, and finds no other: only `ray start` records a
cluster to join), and stop_ray() ends only the processes tagged with this worker's TAG."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

ray = pytest.importorskip("ray")

from pipeline.simulator.process import SimulatorProcess  # noqa: E402
from tests.e2e import REPO, StderrLines, label_job, run_cli, wait_for  # noqa: E402
from tests.test_ray_e2e import reviews, stop_ray  # noqa: E402
from tests.test_ray_stops_e2e import ours, start_driver, stop_by_signal  # noqa: E402

# Real processes (drivers, and the Ray cluster each starts)
pytestmark = pytest.mark.process


@pytest.mark.parametrize(("number", "group"), [(signal.SIGINT, True)])
def test_a_signal_stops_a_ray_run_as_it_stops_a_local_one(
    tmp_path: Path, number: int, group: bool
) -> None:
    # Ctrl-C reaches the driver and the cluster it started (SIGTERM to a driver on the
    # session's cluster: test_ray_stops_e2e.py)
    assert group
    stop_by_signal(tmp_path, number, None)


def test_a_second_ctrl_c_cancels_the_requests_in_flight_and_keeps_the_answers(
    tmp_path: Path,
) -> None:
    with SimulatorProcess(latency_ms=4000.0) as simulator:
        job = label_job(tmp_path, reviews(tmp_path, 300), limits={"concurrency": 4})
        driver = start_driver(job, simulator.base_url)
        lines = StderrLines(driver)
        try:
            wait_for(lambda: len(simulator.ledger()) >= 4, "answers")
            first_ts = time.time()
            os.killpg(driver.pid, signal.SIGINT)
            # two presses, not one: the first must be seen alone
            wait_for(lambda: lines.has("press Ctrl-C again"), "the first Ctrl-C seen")
            os.killpg(driver.pid, signal.SIGINT)
            cancelled_at, cancelled_ts = time.monotonic(), first_ts
            driver.wait(timeout=120)
            stderr = lines.text()
            took = time.monotonic() - cancelled_at
        finally:
            driver.kill()
            stop_ray()
        answered = {e["request_id"] for e in simulator.ledger() if e["ts"] <= cancelled_ts}
    ours(stderr)
    assert driver.returncode == 130, stderr
    assert took < 4.0, stderr  # the 4 s answers in flight were not waited for
    table = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert answered and answered <= set(table["request_id"].to_list())


def test_an_unreachable_ray_address_is_a_one_line_error(tmp_path: Path) -> None:
    job = label_job(tmp_path, reviews(tmp_path, 3))
    done = run_cli("run", str(job), "--ray", "127.0.0.1:1", "--base-url", "http://127.0.0.1:9")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "cannot reach the Ray cluster" in line


def test_ray_without_the_extra_is_a_one_line_error(tmp_path: Path) -> None:
    job = label_job(tmp_path, reviews(tmp_path, 3))
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from pipeline.cli import main\n"
        f"sys.exit(main(['run', {str(job)!r}, '--ray', '--base-url', 'http://127.0.0.1:9']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
        env={"AISA_API_KEY": "sk-test-key", "PATH": "/usr/bin:/bin"}, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "pip install 'pipeline[ray]'" in line
