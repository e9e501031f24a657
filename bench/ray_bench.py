"""`pipeline run --ray` (a local Ray cluster started by the run, 2 worker actors) against the
simulator in its own process, each run a `pipeline run` child.

- limit: the job told requests_per_minute = 1,200 = the limit the simulator enforces (200 ms
  answers, 2,000 rows, 32 in flight): requests admitted a minute over the steady part of the
  run (5th to 95th percentile of the ledger's timestamps, so Ray's start-up and the tail are
  left out) / the limit, the share of requests answered 429, and whether results.parquet
  equals a local run's (against an instant simulator) row for row, volatile columns aside.
- cap: a gateway's cap on requests in flight (the simulator admits CAP at once and answers
  the rest 429, 300 ms answers), job concurrency 32, 1,200 rows, no told limit: the rows a
  second over the steady part of the run (ledger percentiles, as above) against the cap's
  (CAP / latency), the share of requests answered 429, error rows. The requests in flight
  are learned once for the cluster (ray/lease.py), each worker getting its share.
- overhead: rows/s and CPU ms a row, on Ray and locally, against an instant simulator, no
  limits, 64 in flight, 20,000 rows. Wall time includes interpreter and Ray start-up; CPU
  is the whole machine's busy time (/proc/stat) during the run, so it includes the simulator
  and Ray's own processes (GCS, raylet, workers).

Ray processes a run leaves behind are found by a tag in their environment (inherited from
the run's child) and stopped by pid: a Ray cluster someone else runs on the machine is never
touched.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from bench.common import ENV, REPO, command, make_job
from pipeline.simulator.process import SimulatorProcess

WORKERS = 2
LIMIT_RPM = 1200
VOLATILE = ["finished_at", "latency_ms", "request_id", "attempts"]
TAG = "PIPELINE_RAY_BENCH_TAG"  # in the environment of every process a measured run starts
BUSY = (0, 1, 2, 5, 6)  # /proc/stat cpu fields: user nice system (idle iowait) irq softirq


def busy_cpu_s() -> float:
    """The whole machine's busy CPU time so far (every core), in seconds."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    return sum(int(fields[i]) for i in BUSY) / os.sysconf("SC_CLK_TCK")


def tagged_pids(tag: str) -> list[int]:
    """Processes (but this one) whose environment carries TAG=tag: the run's, Ray's included."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if needle in environ.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:  # gone, or not ours
            continue
    return found


def stop_tagged(tag: str, grace_s: float = 10.0) -> int:
    """Stop what a finished run left running (by pid); how many processes there were."""
    deadline = time.monotonic() + grace_s
    left = tagged_pids(tag)
    while left and time.monotonic() < deadline:  # a clean ray.shutdown() takes a moment
        time.sleep(0.5)
        left = tagged_pids(tag)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = tagged_pids(tag)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if pids:
            time.sleep(2.0)
    return len(left)


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # the machine's busy CPU time during the run
    started_at: float  # UNIX time, comparable with the ledger's `ts`
    leftover: int  # Ray processes still running once the run had exited


def run(job: Path, base_url: str, *extra: str) -> Run:
    """One `pipeline run` child to its end; a failure stops the benchmark."""
    tag = uuid.uuid4().hex
    env = {k: v for k, v in ENV.items() if k != "RAY_ADDRESS"}  # a cluster of its own
    env[TAG] = tag
    cpu, started_at, started = busy_cpu_s(), time.time(), time.perf_counter()
    done = subprocess.run(
        [*command(job, base_url), *extra], cwd=REPO, env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    wall, cpu = time.perf_counter() - started, busy_cpu_s() - cpu
    leftover = stop_tagged(tag)
    if done.returncode != 0:
        raise SystemExit(f"pipeline run {' '.join(extra)} failed: {done.stderr.strip()}")
    return Run(wall, cpu, started_at, leftover)


def results(out: Path) -> pl.DataFrame:
    return pl.read_parquet(out / "results.parquet").drop(VOLATILE)


def limit(rows: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        job = make_job(Path(tmp), rows, 32, f"requests_per_minute = {LIMIT_RPM}")
        with SimulatorProcess(rpm=LIMIT_RPM, latency_ms=200) as sim:
            on_ray = run(job, sim.base_url, "--ray", "--workers", str(WORKERS))
            times = sorted(entry["ts"] for entry in sim.ledger())
            stats = sim.stats()
        with SimulatorProcess() as sim:  # the same job, locally: another output, unpaced
            local_out = Path(tmp) / "local_out"
            run(job, sim.base_url, "--output", str(local_out), "--rpm", "1000000")
        ray_results, local_results = results(Path(tmp) / "out"), results(local_out)
    low, high = round(0.05 * (len(times) - 1)), round(0.95 * (len(times) - 1))
    per_minute = (high - low) / (times[high] - times[low]) * 60
    use = per_minute / LIMIT_RPM
    refused = stats["refused"]["rate_limit"]
    share_429 = refused / stats["requests"]
    equal = ray_results.height == rows and ray_results.equals(local_results)
    met = use >= 0.95 and share_429 <= 0.01
    return (
        f"ray limit: {WORKERS} workers, told {LIMIT_RPM:,}/min = the simulator's enforced "
        f"limit, {rows:,} rows, 200 ms: {use:.1%} of the limit, {share_429:.2%} 429s, results "
        f"equal to a local run: {'yes' if equal else 'no'} | {per_minute:,.0f} requests/min "
        f"(5th-95th percentile of the ledger), {refused} 429s of {stats['requests']:,} "
        f"requests, {on_ray.wall_s:.1f} s in all | targets (>= 95% of the limit, <= 1% 429s): "
        f"{'met' if met else 'NOT met'}{leftovers(on_ray)}"
    )


def cap(rows: int, cap_in_flight: int = 10, latency_ms: float = 300) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        job = make_job(Path(tmp), rows, 32, "max_retries = 3")  # as the pressure bench
        with SimulatorProcess(max_concurrency=cap_in_flight, latency_ms=latency_ms) as sim:
            on_ray = run(job, sim.base_url, "--ray", "--workers", str(WORKERS))
            times = sorted(entry["ts"] for entry in sim.ledger())
            stats = sim.stats()
        out = pl.read_parquet(Path(tmp) / "out" / "results.parquet")
    low, high = round(0.05 * (len(times) - 1)), round(0.95 * (len(times) - 1))
    rate = (high - low) / (times[high] - times[low])
    ideal = cap_in_flight / (latency_ms / 1000)
    refused = stats["refused"]["concurrency"]
    errors = out.filter(pl.col("status") == "error").height
    return (
        f"ray cap: {WORKERS} workers, a gateway admitting {cap_in_flight} in flight, job "
        f"concurrency 32, {latency_ms:.0f} ms, {rows:,} rows: {rate:.1f} rows/s of the cap's "
        f"{ideal:.1f} = {rate / ideal:.0%} (5th-95th percentile of the ledger) | 429s: "
        f"{refused} of {stats['requests']:,} requests = {refused / stats['requests']:.1%} | "
        f"error rows: {errors} | {on_ray.wall_s:.1f} s in all{leftovers(on_ray)}"
    )


def overhead(rows: int) -> str:
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("ray", ("--ray", "--workers", str(WORKERS))), ("local", ())):
            directory = Path(tmp) / name
            directory.mkdir()
            job = make_job(directory, rows, 64)
            with SimulatorProcess() as sim:
                measured = run(job, sim.base_url, *extra)
                first = min(entry["ts"] for entry in sim.ledger())
            out = pl.read_parquet(directory / "out" / "results.parquet")
            assert out.height == rows and (out["status"] == "ok").all(), f"{name}: not all ok"
            figures[name] = (measured, first - measured.started_at)
    (on_ray, ray_first), (local, local_first) = figures["ray"], figures["local"]
    return (
        f"ray overhead: {WORKERS} workers vs local, instant simulator, {rows:,} rows: "
        f"ray {rows / on_ray.wall_s:,.0f} rows/s ({1000 * on_ray.cpu_s / rows:.3f} CPU ms a row), "
        f"local {rows / local.wall_s:,.0f} rows/s ({1000 * local.cpu_s / rows:.3f} CPU ms a row)"
        f" | wall {on_ray.wall_s:.1f} s vs {local.wall_s:.1f} s with start-up (Ray's included), "
        f"first row done after {ray_first:.1f} s vs {local_first:.1f} s | CPU: the whole "
        f"machine's ({os.cpu_count()} CPUs), the simulator's and Ray's own processes included"
        f"{leftovers(on_ray)}"
    )


def leftovers(measured: Run) -> str:
    if not measured.leftover:
        return ""
    return f" | {measured.leftover} Ray processes outlived the run (stopped by pid)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000, help="rows of the limit run")
    parser.add_argument("--overhead-rows", type=int, default=20_000)
    parser.add_argument("--only", choices=("limit", "cap", "overhead"))
    parser.add_argument("--cap", type=int, default=10, help="the gateway's cap in flight")
    args = parser.parse_args()
    if args.only in (None, "limit"):
        print(limit(args.rows), flush=True)
    if args.only in (None, "cap"):
        print(cap(1200, args.cap), flush=True)
    if args.only in (None, "overhead"):
        print(overhead(args.overhead_rows), flush=True)


if __name__ == "__main__":
    main()
