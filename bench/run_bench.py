"""One `pipeline run` of 2,000 simulator rows: against an instant simulator (64 in flight)
and one answering in 200 ms (256 in flight). Figures include interpreter start-up."""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl

from bench.common import make_job, run_measured
from pipeline.simulator.process import SimulatorProcess


def scenario(rows: int, concurrency: int, latency_ms: float) -> str:
    with tempfile.TemporaryDirectory() as tmp, SimulatorProcess(latency_ms=latency_ms) as simulator:
        job = make_job(Path(tmp), rows, concurrency)
        measured = run_measured(job, simulator.base_url)
        out = pl.read_parquet(Path(tmp) / "out" / "results.parquet")
    assert out.height == rows and (out["status"] == "ok").all(), "not every row ok"
    return f"run, {concurrency} in flight, simulator latency {latency_ms:g} ms: " + measured.line(
        rows
    )


if __name__ == "__main__":
    print(scenario(2000, 64, 0), flush=True)
    print(scenario(2000, 256, 200), flush=True)
