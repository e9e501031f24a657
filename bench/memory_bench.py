"""Peak memory of `pipeline run` over a 1,000,000-row input against an instant simulator.

Not part of `make bench` (it takes minutes): `make bench-memory`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import polars as pl

from bench.limits_bench import make_job, run_cli
from pipeline.simulator.process import SimulatorProcess


def main(rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, SimulatorProcess() as sim:
        job = make_job(Path(tmp), rows, 64)
        wall, cpu, rss, _ = run_cli(job, sim.base_url)
        out = pl.scan_parquet(Path(tmp) / "out" / "results.parquet")
        height = out.select(pl.len()).collect().item()
    assert height == rows
    print(
        f"memory, {rows:,} rows: peak RSS {rss:,.0f} MB | {rows / wall:,.0f} rows/s | "
        f"CPU {1000 * cpu / rows:.3f} ms/row | {wall:,.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
