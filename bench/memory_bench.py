"""Peak memory of `pipeline run` over a 1,000,000-row input against an instant simulator.

Not part of `make bench` (it takes minutes): `make bench-memory`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import polars as pl

from bench.common import make_job, run_measured
from pipeline.simulator.process import SimulatorProcess


def main(rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, SimulatorProcess() as sim:
        job = make_job(Path(tmp), rows, 64)
        measured = run_measured(job, sim.base_url)
        out = pl.scan_parquet(Path(tmp) / "out" / "results.parquet")
        height = out.select(pl.len()).collect().item()
    assert height == rows
    print(f"memory, {rows:,}-row input streamed: {measured.line(rows)}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
