"""--ray with the input and the output in object storage and no shared directory: the
workers read their rows from the driver's read of the input URL and put their shards'
parts to the output URL from mirrors of their own; the driver takes them in from there.
A real process (the run starts its own local cluster, whose workers inherit the
environment that reaches the S3-compatible server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from pipeline.simulator.process import SimulatorProcess
from tests.e2e import REPO
from tests.test_object_storage_e2e import job, put_reviews, remote_files, s3, s3_server

__all__ = ["s3", "s3_server"]  # the fixtures, used here by name

pytest.importorskip("ray")


@pytest.mark.process
def test_ray_reads_and_writes_object_storage_without_a_shared_directory(
    tmp_path: Path, s3: dict[str, str]
) -> None:
    put_reviews(s3["bucket"], rows=60, files=3)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a cluster of its own
    env.update({k: v for k, v in s3.items() if k != "bucket"}, AISA_API_KEY="sk-test-key")
    with SimulatorProcess() as sim:
        path = job(tmp_path, s3["bucket"], sim.base_url)
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", str(path), "--ray", "--workers", "2",
             "--no-progress"],
            cwd=REPO, env=env, text=True, capture_output=True, timeout=240,
        )  # fmt: skip
        paid = len(sim.ledger())
    assert done.returncode == 0, done.stderr
    results = pl.read_parquet(f"s3://{s3['bucket']}/out/labels/results.parquet")
    assert results.height == 60 == paid and results["status"].unique().to_list() == ["ok"]
    assert sorted(results["region"].unique()) == ["r0", "r1", "r2"]
    mirrors = [p.name for p in Path(s3["PIPELINE_MIRRORS"]).iterdir()]
    assert sum("ray_shard-" in name for name in mirrors) == 2  # each worker's own mirror
    assert not any("/ray/" in name for name in remote_files(s3["bucket"]))  # all taken in
