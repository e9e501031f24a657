"""Rate-limit use and per-row overhead, each from one run against the simulator.

- utilization: achieved requests a minute / the limit, and the share answered 429, for a
  limit told in the job and for one learned from the answers' headers (3,000 RPM, 300 ms
  +- 200 ms latency). Measured from the simulator's ledger, first to last billed request.
- overhead: rows/s and CPU ms a row of `pipeline run` end to end (read, render, send,
  parse, journal, write) against an instant simulator in its own process, 20,000 rows,
  64 in flight; and, in the same run, plain aiohttp POSTs with no pipeline around them.
  The two take turns, five pairs by default: both share 2 cores with the simulator, and
  one pair's ratio moves by +-15% with what else the machine does. The ratio printed is
  the median of the pairs'. (`bench.instructions_bench` counts instructions instead, which
  repeat within 0.2%.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import make_job, run_measured
from pipeline.simulator.process import SimulatorProcess


def utilization(name: str, limits: str, rows: int, rpm: int = 3000) -> str:
    with (
        tempfile.TemporaryDirectory() as tmp,
        SimulatorProcess(rpm=rpm, latency_ms=300, latency_jitter_ms=200) as sim,
    ):
        job = make_job(Path(tmp), rows, 64, limits)
        run_measured(job, sim.base_url)
        times = sorted(entry["ts"] for entry in sim.ledger())
        stats = sim.stats()
    achieved = (len(times) - 1) / (times[-1] - times[0]) * 60
    answered_429 = stats["by_status"].get("429", 0)
    return (
        f"utilization, {name}: {achieved:,.0f} requests/min of {rpm:,} = "
        f"{achieved / rpm:.1%} | 429s: {answered_429} of {stats['requests']:,} requests "
        f"= {answered_429 / stats['requests']:.2%}"
    )


def overhead(rows: int, pairs: int = 5) -> str:
    """`pairs` runs of ours, each followed by the floor's. This machine's speed drifts
    (the same run's CPU by up to a third from one minute to the next), so beside the
    median of the pairs' ratios the ratio of each side's least CPU is printed: the two
    as measured when the machine was at its quickest."""
    lines, ratios, ours, floors = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp, SimulatorProcess() as sim:
        for pair in range(pairs):
            out = Path(tmp) / f"pair-{pair}"
            out.mkdir()
            sim.reset()  # each run against the same simulator: an empty ledger, no cache
            measured = run_measured(make_job(out, rows, 64), sim.base_url)
            sim.reset()
            wall, cpu = aiohttp_floor(sim.base_url, rows)
            ratios.append(measured.cpu_s / cpu)
            ours.append(measured.cpu_s)
            floors.append(cpu)
            lines.append(f"overhead, pipeline run: {measured.line(rows)}")
            lines.append(
                f"overhead, plain aiohttp: {rows:,} requests in {wall:.2f} s = "
                f"{rows / wall:,.0f} requests/s | CPU {1000 * cpu / rows:.3f} ms/request "
                f"(interpreter start-up included) | ratio {ratios[-1]:.2f}x"
            )
    each = ", ".join(f"{r:.2f}" for r in ratios)
    lines.append(
        f"overhead, CPU a row / plain aiohttp's: {statistics.median(ratios):.2f}x "
        f"(median of {pairs} pairs: {each}); least CPU of each side: {min(ours):.2f} s / "
        f"{min(floors):.2f} s = {min(ours) / min(floors):.2f}x"
    )
    return "\n".join(lines)


def aiohttp_floor(base_url: str, requests: int) -> tuple[float, float]:
    """The same requests from bare aiohttp (64 long-lived workers), in a child process:
    its wall and CPU seconds."""
    out = subprocess.run(
        floor_command(base_url, requests), capture_output=True, text=True, check=True
    ).stdout
    wall, cpu = json.loads(out)
    return wall, cpu


def floor_command(base_url: str, requests: int) -> list[str]:
    """The plain aiohttp loop as a command: it prints its wall and CPU seconds (JSON)."""
    code = f"""
import asyncio, json, os, resource, time, aiohttp, orjson
BODY = orjson.dumps({{"model": "claude-haiku-4-5-20251001", "max_tokens": 16, "messages":
    [{{"role": "user", "content": "Review: works great\\nAnswer with one word: positive, "
       "negative or neutral."}}]}})
async def main():
    queue = asyncio.Queue()
    for _ in range({requests}): queue.put_nowait(1)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        async def worker():
            while not queue.empty():
                queue.get_nowait()
                async with session.post("{base_url}/v1/messages", data=BODY,
                        headers={{"content-type": "application/json",
                                  "authorization": "Bearer x"}}) as r:
                    orjson.loads(await r.read())
        await asyncio.gather(*(worker() for _ in range(64)))
start = time.perf_counter(); asyncio.run(main()); wall = time.perf_counter() - start
u = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps([wall, u.ru_utime + u.ru_stime]))
"""
    return [sys.executable, "-c", code]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=3000, help="rows of each utilization run")
    parser.add_argument("--overhead-rows", type=int, default=20_000)
    parser.add_argument("--overhead-pairs", type=int, default=5)
    parser.add_argument("--only", choices=("utilization", "overhead"))
    args = parser.parse_args()
    if args.only != "overhead":
        print(
            utilization(
                "told (requests_per_minute = 3000)", "requests_per_minute = 3000", args.rows
            ),
            flush=True,
        )
        print(utilization("learned (no limits in the job)", "", args.rows), flush=True)
    if args.only != "utilization":
        print(overhead(args.overhead_rows, args.overhead_pairs), flush=True)


if __name__ == "__main__":
    main()
