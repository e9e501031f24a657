"""Under pressure, each figure from one `pipeline run` against the simulator on loopback.

1. Concurrency cap: the simulator admits N requests in flight and answers the rest 429
   "too many concurrent requests" (no bucket headers), the job asks for more. Throughput
   against the cap's (N / latency), the share of requests answered 429, error rows.
2. Outage: every request answered 503 for 60 s in the middle of a 2,000-row run. Error
   rows, requests sent during the outage, and how soon after its end answers flow again.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import polars as pl

from bench.common import make_job, run_to_end
from pipeline.simulator.process import SimulatorProcess


def concurrency_cap(cap: int, concurrency: int, rows: int, latency_ms: float = 300) -> str:
    with (
        tempfile.TemporaryDirectory() as tmp,
        SimulatorProcess(max_concurrency=cap, latency_ms=latency_ms) as sim,
    ):
        job = make_job(Path(tmp), rows, concurrency, "max_retries = 3")
        started = time.perf_counter()
        done = run_to_end(job, sim.base_url)
        wall = time.perf_counter() - started
        stats = sim.stats()
        out = pl.read_parquet(Path(tmp) / "out" / "results.parquet")
    ideal = cap / (latency_ms / 1000)
    rate = rows / wall
    refused = stats["refused"]["concurrency"]
    settled = [line.strip() for line in done.stderr.splitlines() if "settled at" in line]
    return (
        f"concurrency cap {cap}, job concurrency {concurrency}, {latency_ms:.0f} ms, {rows:,} "
        f"rows: {rate:.1f} rows/s of the cap's {ideal:.1f} = {rate / ideal:.0%} | 429s: "
        f"{refused} of {stats['requests']:,} requests = {refused / stats['requests']:.1%} | "
        f"error rows: {out.filter(pl.col('status') == 'error').height} | "
        f"{settled[-1].split(' ', 2)[-1] if settled else 'no cap met'}"
    )


def outage(rows: int = 2000, outage_s: float = 60.0, after_s: float = 4.0) -> str:
    with (
        tempfile.TemporaryDirectory() as tmp,
        SimulatorProcess(latency_ms=100, outage_after_s=after_s, outage_for_s=outage_s) as sim,
    ):
        job = make_job(Path(tmp), rows, 16, "max_retries = 3")
        run_to_end(job, sim.base_url)
        stats = sim.stats()
        ledger = sim.ledger()
        out = pl.read_parquet(Path(tmp) / "out" / "results.parquet")
    end = stats["outage"]["end_ts"]
    after = sorted(entry["ts"] for entry in ledger if entry["ts"] > end)
    first = after[0] - end if after else float("nan")
    # "full speed": the first second in which answers came at the run's usual pace
    before = [entry["ts"] for entry in ledger if entry["ts"] < stats["outage"]["start_ts"]]
    usual = len(before) / max(before[-1] - before[0], 1e-9) if len(before) > 1 else 0.0
    full = next(
        (t - end for t in after if sum(1 for u in after if t <= u < t + 1) >= 0.8 * usual),
        float("nan"),
    )
    return (
        f"outage of {outage_s:.0f} s in a {rows:,}-row run: error rows "
        f"{out.filter(pl.col('status') == 'error').height} | requests during the outage "
        f"{stats['refused']['outage']} | first answer {first:.1f} s after its end, full "
        f"speed ({usual:,.0f} rows/s) {full:.1f} s after"
    )


if __name__ == "__main__":
    print(concurrency_cap(5, 32, 600), flush=True)
    print(concurrency_cap(20, 64, 1200), flush=True)
    print(outage(), flush=True)
