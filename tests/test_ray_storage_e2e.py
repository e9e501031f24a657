"""--ray with the input and the output in object storage and no shared directory: the
workers read their rows from the driver's read of the input URL and put their shards'
parts to the output URL from mirrors of their own; the driver takes them in from there.
A real process (the run starts its own local cluster, whose workers inherit the
environment that reaches the S3-compatible server)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from pipeline.simulator.process import SimulatorProcess
from tests.e2e import REPO
from tests.test_object_storage_e2e import (
    filesystem,
    job,
    put_reviews,
    remote_files,
    s3,
    s3_server,
)

__all__ = ["s3", "s3_server"]  # the fixtures, used here by name

pytest.importorskip("ray")


def leases_while(driver: subprocess.Popen[str], key: str, sim: SimulatorProcess) -> list[float]:
    """The lease's expiries seen while the driver runs, from its first request on."""
    fs, seen = filesystem(), []
    while driver.poll() is None:
        if sim.stats()["requests"]:
            with contextlib.suppress(OSError, ValueError):  # none yet, or let go at the end
                with fs.open_input_stream(key) as stream:
                    expires = float(json.loads(stream.read())["expires"])
                if expires not in seen:
                    seen.append(expires)
        time.sleep(0.05)
    return seen


@pytest.mark.process
def test_ray_reads_and_writes_object_storage_without_a_shared_directory(
    tmp_path: Path, s3: dict[str, str]
) -> None:
    put_reviews(s3["bucket"], rows=60, files=3)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a cluster of its own
    env.update({k: v for k, v in s3.items() if k != "bucket"}, AISA_API_KEY="sk-test-key")
    with SimulatorProcess(latency_ms=100) as sim:  # 60 rows: about 2 s of supervising
        path = job(tmp_path, s3["bucket"], sim.base_url, fold_s=1)  # a lease of 3 s
        driver = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(path), "--ray", "--workers", "2",
             "--no-progress"],
            cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        leases = leases_while(driver, f"{s3['bucket']}/out/labels/.lease", sim)
        _, stderr = driver.communicate(timeout=240)
        paid = len(sim.ledger())
    assert driver.returncode == 0, stderr
    # renewed while the workers ran: the driver's loop holds the event loop there, so its
    # own renewals (LeaseKeeper), not the keep_pushing task's (before: the lease renewed
    # after the pull was the last, and ran out: another machine could take the output over)
    assert len(leases) >= 2, leases
    results = pl.read_parquet(f"s3://{s3['bucket']}/out/labels/results.parquet")
    assert results.height == 60 == paid and results["status"].unique().to_list() == ["ok"]
    assert sorted(results["region"].unique()) == ["r0", "r1", "r2"]
    mirrors = [p.name for p in Path(s3["PIPELINE_MIRRORS"]).iterdir()]
    assert sum("ray_shard-" in name for name in mirrors) == 2  # each worker's own mirror
    assert not [n for n in remote_files(s3["bucket"]) if "/ray/" in n]  # all taken in
