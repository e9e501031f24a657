"""A full disk mid-run: sending stops at the first write error, answers already paid are
kept in memory and offered to the disk again, the run exits 6 with a line that says where
and what to do (not "a bug"), and the resume pays for nothing twice.

The real thing is a small tmpfs (where the test may mount one: root); everywhere, a file
size limit (RLIMIT_FSIZE) makes the kernel refuse writes the same way (EFBIG).
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from tests.e2e import REPO, label_job, wait_for

ROWS = 600


def big_rows(path: Path) -> None:
    texts = [f"row {i}: works well " + "y" * 1500 for i in range(ROWS)]
    pl.DataFrame({"id": [f"k{i:04d}" for i in range(ROWS)], "text": texts}).write_csv(path)


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[bool]:
    """A tmpfs of `size` at `directory`; yields False where none can be mounted."""
    directory.mkdir()
    if os.geteuid() != 0:
        yield False
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        check=False,
    )
    try:
        yield mounted.returncode == 0
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(directory)], check=False)


def start(job: Path, base_url: str, retry_s: int = 20, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, "AISA_API_KEY": "sk-test-key", "PIPELINE_WRITE_RETRY_S": str(retry_s)}
    command = [sys.executable, "-m", "pipeline", "run", str(job), "--base-url", base_url]
    return subprocess.Popen(
        [*command, "--no-progress"],
        cwd=REPO,
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **popen,  # type: ignore[call-overload]
    )


def watch(child: subprocess.Popen[str], lines: list[str], seen: threading.Event) -> None:
    assert child.stderr is not None
    for line in child.stderr:
        lines.append(line)
        if "sending stopped" in line:
            seen.set()


def assert_clean_stop(code: int, stderr: str, what: str) -> None:
    assert code == 6, stderr
    last = stderr.strip().splitlines()[-1]
    assert what in last, stderr
    assert "bug" not in stderr and "killed mid-write" not in stderr and "Traceback" not in stderr


@pytest.mark.process
def test_disk_full_keeps_paid_answers_and_resumes_without_paying_twice(tmp_path, cli, session_sim):
    out = tmp_path / "disk"
    with tmpfs(out, "256k") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here; the RLIMIT_FSIZE test covers the mechanism")
        big_rows(tmp_path / "in.csv")
        job = label_job(
            tmp_path, tmp_path / "in.csv", job={"output": str(out / "job")},
            limits={"concurrency": 8},
        )  # fmt: skip
        with session_sim.started_over(latency_ms=50) as sim:
            child = start(job, sim.base_url)
            lines: list[str] = []
            seen = threading.Event()
            reader = threading.Thread(target=watch, args=(child, lines, seen))
            reader.start()
            assert seen.wait(60), "".join(lines)
            # answers in flight land in memory meanwhile
            wait_for(lambda: sim.stats()["in_flight"] == 0, "the answers in flight")
            subprocess.run(["mount", "-o", "remount,size=64m", str(out)], check=True)  # freed
            child.wait(60)
            reader.join()
            assert_clean_stop(child.returncode, "".join(lines), "disk full at")
            assert "every paid answer is kept" in "".join(lines)
            resumed = cli("run", str(job), "--base-url", sim.base_url, "--no-progress")
            billed = Counter(entry["prompt_sha256"] for entry in sim.ledger())
        assert resumed.returncode == 0, resumed.stderr
        assert len(billed) == ROWS and max(billed.values()) == 1  # nothing paid twice
        results = pl.read_parquet(out / "job" / "results.parquet")
        assert results.height == ROWS and results["status"].unique().to_list() == ["ok"]


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


@pytest.mark.process
def test_a_refused_write_stops_the_run_with_exit_6_and_a_clear_line(tmp_path, cli, session_sim):
    big_rows(tmp_path / "in.csv")
    job = label_job(tmp_path, tmp_path / "in.csv", limits={"concurrency": 8})
    with session_sim.started_over(latency_ms=50) as sim:
        child = start(job, sim.base_url, retry_s=2, preexec_fn=limit_file_size)
        _, stderr = child.communicate(timeout=120)
        print(stderr)
        assert_clean_stop(child.returncode, stderr, "File too large")
        assert "fix it and run again" in stderr
        resumed = cli("run", str(job), "--base-url", sim.base_url, "--no-progress")
        billed = Counter(entry["prompt_sha256"] for entry in sim.ledger())
    assert resumed.returncode == 0, resumed.stderr
    assert len(billed) == ROWS
    # only answers that arrived while the file stayed full can be paid again: at most
    # the requests in flight at the first refusal
    assert sum(n - 1 for n in billed.values()) <= 8
