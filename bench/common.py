"""What the benchmarks share: a labelling job over generated rows, and one measured
`pipeline run` in a child process (its own rusage via os.wait4, not the simulator's)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "AISA_API_KEY": "sk-bench-key"}  # 8+ characters: a shorter one is refused
JOB = """
[job]
input = "{input}"
id_column = "id"
output = "{output}"
keep_columns = ["text"]

[request]
model = "claude-haiku-4-5-20251001"
max_tokens = 16
prompt = "Review: {{text}}\\nAnswer with one word: positive, negative or neutral."

[limits]
concurrency = {concurrency}
{limits}

[extract]
kind = "choice"
choices = ["positive", "negative", "neutral"]
"""


def make_job(directory: Path, rows: int, concurrency: int, limits: str = "") -> Path:
    """A job over `rows` generated reviews (Parquet input) writing to directory/out."""
    texts = [
        f"review {i}: {'works great, love it' if i % 3 else 'stopped working'}" for i in range(rows)
    ]
    frame = pl.DataFrame({"id": [f"r{i:07d}" for i in range(rows)], "text": texts})
    frame.write_parquet(directory / "in.parquet")
    job = directory / "job.toml"
    job.write_text(
        JOB.format(
            input=directory / "in.parquet",
            output=directory / "out",
            concurrency=concurrency,
            limits=limits,
        )
    )
    return job


def command(job: Path, base_url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        str(job),
        "--base-url",
        base_url,
        "--no-progress",
    ]


def run_to_end(job: Path, base_url: str) -> subprocess.CompletedProcess[str]:
    """One `pipeline run` to its end; a failure stops the benchmark."""
    return subprocess.run(
        command(job, base_url), cwd=REPO, env=ENV, capture_output=True, text=True, check=True
    )


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    stderr: str

    def line(self, rows: int) -> str:
        return (
            f"{rows:,} rows in {self.wall_s:.2f} s = {rows / self.wall_s:,.0f} rows/s | "
            f"CPU {1000 * self.cpu_s / rows:.3f} ms/row | peak RSS {self.peak_rss_mb:.0f} MB"
        )


def run_measured(job: Path, base_url: str, env: dict[str, str] | None = None) -> Measured:
    """One `pipeline run` child: wall time, its own CPU time and peak memory. `env` is laid
    over the benchmarks' environment."""
    started = time.perf_counter()
    child = subprocess.Popen(
        command(job, base_url),
        cwd=REPO,
        env={**ENV, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    stderr = child.stderr.read() if child.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"pipeline run failed: {stderr.strip()}")
    return Measured(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stderr)


@contextlib.contextmanager
def s3_server(start_timeout_s: float = 30.0) -> Iterator[str]:
    """moto's S3-compatible server (the dev extra) in a process of its own on a free
    loopback port, for the storage benchmark and tests; its endpoint URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    moto = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + start_timeout_s
    try:
        while True:  # until it answers: its start is the only wait
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
