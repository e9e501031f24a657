"""`make bench`: the pipeline's own figures, each from one run against the simulator.

The simulator runs in its own process on loopback. Each scenario runs the real CLI
(`python -m pipeline run ...`) as a child and reads that child's own rusage (os.wait4), so
the figures are the pipeline's CPU and peak memory, not the simulator's.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.simulator.process import SimulatorProcess

REPO = Path(__file__).resolve().parent.parent
WORDS = (
    "great", "sturdy", "arrived", "broke", "refund", "love", "fine", "okay", "battery",
    "screen", "strap", "works", "well", "returned", "cheap", "quality", "price", "shipping",
    "fast", "slow", "small", "large", "colour", "fits",
)  # fmt: skip


@dataclass
class Figures:
    rows: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float

    def line(self, name: str) -> str:
        return (
            f"{name}: {self.rows:,} rows in {self.wall_s:.2f} s = "
            f"{self.rows / self.wall_s:,.0f} rows/s | CPU {self.cpu_s:.2f} s = "
            f"{1000 * self.cpu_s / self.rows:.2f} ms/row | peak RSS {self.peak_rss_mb:.0f} MB"
        )


def write_input(path: Path, rows: int) -> None:
    rng = random.Random(1)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(12, 40))) for _ in range(rows)]
    pl.DataFrame({"id": [f"r{i}" for i in range(rows)], "text": texts}).write_csv(path)


def write_job(directory: Path, input_path: Path, concurrency: int) -> Path:
    job = directory / "job.toml"
    job.write_text(f"""
[job]
input = "{input_path}"
id_column = "id"
output = "{directory / "out"}"
keep_columns = ["text"]

[request]
model = "claude-haiku-4-5-20251001"
max_tokens = 16
prompt = "Review: {{text}}\\nAnswer with one word: positive, negative or neutral."

[limits]
concurrency = {concurrency}

[extract]
kind = "choice"
choices = ["positive", "negative", "neutral"]
""")
    return job


def run_pipeline(job: Path, base_url: str) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MB) of one `pipeline run` child."""
    env = {**os.environ, "AISA_API_KEY": "bench"}
    started = time.perf_counter()
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            str(job),
            "--base-url",
            base_url,
            "--no-progress",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    stderr = child.stderr.read().decode() if child.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"pipeline run failed: {stderr.strip()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def scenario(name: str, rows: int, concurrency: int, latency_ms: float) -> str:
    with tempfile.TemporaryDirectory() as tmp, SimulatorProcess(latency_ms=latency_ms) as simulator:
        directory = Path(tmp)
        write_input(directory / "in.csv", rows)
        job = write_job(directory, directory / "in.csv", concurrency)
        wall, cpu, rss = run_pipeline(job, simulator.base_url)
        out = pl.read_parquet(directory / "out" / "results.parquet")
        assert out.height == rows and (out["status"] == "ok").all(), "not every row ok"
        label = f"{name} ({concurrency} in flight, simulator latency {latency_ms:g} ms)"
        return Figures(rows, wall, cpu, rss).line(label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args()
    print(scenario("run, instant server", args.rows, 64, 0), flush=True)
    print(scenario("run, 200 ms server", args.rows, 256, 200), flush=True)


if __name__ == "__main__":
    main()
