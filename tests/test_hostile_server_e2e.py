"""The real CLI against a hostile server (tests/hostile_server.py, its own process on
loopback): answers without usage or with impossible usage, redirects to another host, the
key echoed back, answers that trickle, answers too large. What a user relies on: the exit
code, the rows in results.parquet, the budget, and that the key is in no file, no stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from tests.e2e import REPO, label_job

SECRET = "sk-hostile-SECRET-7f3a9c2e41"
ENV = {"AISA_API_KEY": SECRET}


class Hostile:
    def __init__(self, base_url: str, catcher: str) -> None:
        self.base_url, self.catcher = base_url, catcher

    def ledger(self) -> dict[str, Any]:
        return httpx.get(f"{self.base_url}/_ledger", timeout=10).json()


@contextmanager
def hostile_server(mode: str = "ok", interval: float = 1.0) -> Iterator[Hostile]:
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.hostile_server",
            "--mode",
            mode,
            "--port",
            "0",
            "--interval",
            str(interval),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        started = json.loads(child.stdout.readline())
        yield Hostile(f"http://127.0.0.1:{started['port']}", started["catcher"])
    finally:
        child.terminate()
        child.wait(timeout=10)


@pytest.fixture(scope="module")
def server() -> Iterator[Hostile]:
    with hostile_server() as hostile:
        yield hostile


def rows(path: Path, modes: list[str], max_tokens: list[int] | None = None) -> None:
    """One input row per mode: its prompt picks how the server answers it."""
    data: dict[str, list[Any]] = {
        "id": [f"r{i}" for i in range(len(modes))],
        "text": [f"a review [[hostile:{mode}]]" for mode in modes],
    }
    if max_tokens is not None:
        data["mt"] = [str(n) for n in max_tokens]
    pl.DataFrame(data).write_csv(path)


STREAMED = 30_000  # max_tokens above 21,333: the answer is streamed


def run(
    cli: Any,
    tmp_path: Path,
    server: Hostile,
    modes: list[str],
    max_tokens: list[int] | None = None,
    **sections: Any,
) -> tuple[subprocess.CompletedProcess[str], pl.DataFrame | None]:
    """Run a label job over one row per mode: the CLI's outcome and results.parquet."""
    rows(tmp_path / "in.csv", modes, max_tokens or [16] * len(modes))
    job = label_job(tmp_path, tmp_path / "in.csv", overrides={"max_tokens": "mt"}, **sections)
    done = cli("run", str(job), "--base-url", server.base_url, "--no-progress", env=ENV)
    results = tmp_path / "out" / "results.parquet"
    out = pl.read_parquet(results) if results.exists() else None
    return done, out


def assert_no_key(out_dir: Path, *streams: str) -> None:
    """The key in no file under the output (Parquet read back cell by cell: it is
    compressed) and in no stream."""
    for stream in streams:
        assert SECRET not in stream
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            cells = frame.select(pl.all().cast(pl.String)).to_dicts()
            assert not [c for row in cells for c in row.values() if c and SECRET in c], path
            assert not [name for name in frame.columns if SECRET in name]


# --- item 6: answers without usage, and impossible usage -----------------------------

NO_USAGE = ["no-usage", "null-usage", "string-usage", "no-output-count"]
IMPOSSIBLE = ["string-count", "negative", "huge-count", "float-count", "bool-count"]


def test_answers_without_usage_are_ok_with_null_cost_and_impossible_usage_is_malformed(
    tmp_path, server, cli
):
    modes = [*NO_USAGE, *IMPOSSIBLE, "ok"]
    done, out = run(cli, tmp_path, server, modes, limits={"max_retries": 1})
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("the API's answer carried no usage: its cost is unknown") == 1
    assert out is not None and out.height == len(modes)
    by_mode = dict(zip(modes, out.iter_rows(named=True), strict=False))
    for mode in NO_USAGE:
        row = by_mode[mode]
        assert (row["status"], row["label"], row["attempts"]) == ("ok", "positive", 1), mode
        assert row["input_tokens"] is None and row["output_tokens"] is None, mode
        assert row["cost_usd"] is None and row["input_cost_usd"] is None, mode  # not $0
    for mode in IMPOSSIBLE:
        row = by_mode[mode]
        assert (row["status"], row["error_type"]) == ("error", "malformed_answer"), mode
        assert "is not a token count" in row["error_message"], mode
        assert row["attempts"] == 2 and row["cost_usd"] == 0.0, mode  # retried once
    ok = by_mode["ok"]
    assert (ok["input_tokens"], ok["output_tokens"], ok["cost_usd"] > 0) == (12, 1, True)


def test_streamed_answers_without_usage_or_with_impossible_usage(tmp_path, server, cli):
    modes = ["no-usage", "negative", "huge-count", "ok"]
    done, out = run(cli, tmp_path, server, modes, [STREAMED] * 4, limits={"max_retries": 0})
    assert done.returncode == 0, done.stderr
    assert out is not None
    status = dict(zip(modes, out.select("status", "error_type", "cost_usd").rows(), strict=True))
    assert status["no-usage"] == ("ok", None, None)
    assert out["input_tokens"][0] is None and out["output_tokens"][0] is None
    assert status["negative"][:2] == status["huge-count"][:2] == ("error", "malformed_answer")
    assert status["ok"][0] == "ok" and status["ok"][2] > 0


def test_the_budget_holds_when_answers_carry_no_usage(tmp_path, cli):
    with hostile_server("no-usage") as hostile:
        rows(tmp_path / "in.csv", ["no-usage"] * 300, [16] * 300)
        job = label_job(
            tmp_path,
            tmp_path / "in.csv",
            overrides={"max_tokens": "mt"},
            limits={"max_cost_usd": 0.001, "concurrency": 8},
        )
        done = cli("run", str(job), "--base-url", hostile.base_url, "--no-progress", env=ENV)
        served = sum(hostile.ledger()["requests"].values())
        again = cli("run", str(job), "--base-url", hostile.base_url, "--no-progress", env=ENV)
        served_again = sum(hostile.ledger()["requests"].values()) - served
    assert again.returncode == 3 and served_again == 0  # the resume counts them too
    assert done.returncode == 3, done.stderr
    assert "stopped at the budget" in done.stderr
    # each row's worst case is ~$0.00018 here (bytes / 2 input tokens at the 1-hour cache
    # write price, 16 output tokens): $0.001 buys at most 5 of them, never 296
    assert 1 <= served <= 5
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out.height == served and out["cost_usd"].null_count() == served


# --- item 7: redirects ---------------------------------------------------------------


def test_redirects_are_error_rows_and_the_other_host_never_sees_the_key(tmp_path, server, cli):
    codes = [301, 302, 303, 307, 308]
    modes = [f"redirect-{code}" for code in codes]
    for auth in ("bearer", "x-api-key"):
        before = len(server.ledger()["caught"])
        (tmp_path / auth).mkdir()
        done, out = run(cli, tmp_path / auth, server, modes, api={"auth": auth})
        assert done.returncode == 0, done.stderr
        assert out is not None
        assert out["http_status"].to_list() == codes
        assert set(out["status"]) == {"error"} and set(out["error_type"]) == {"redirect"}
        assert out["attempts"].to_list() == [1] * len(codes)  # never retried
        for message in out["error_message"]:
            assert f"{server.catcher}/v1/messages?key=[key]" in message
            assert "not followed, so the key was not sent there" in message
        assert len(server.ledger()["caught"]) == before  # the other host got nothing at all
        assert_no_key(tmp_path / auth / "out", done.stdout, done.stderr)


# --- item 8: the key echoed by the server ---------------------------------------------


def test_a_key_echoed_by_the_server_is_stored_and_shown_nowhere(tmp_path, server, cli):
    modes = ["echo", "echo-error", "echo", "ok"]  # the second echo streamed
    done, out = run(cli, tmp_path, server, modes, [16, 16, STREAMED, 16])
    assert done.returncode == 0, done.stderr
    assert out is not None
    echo = out.row(0, named=True)
    assert echo["status"] == "ok" and echo["model"] == "[key]" and echo["stop_reason"] == "[key]"
    assert echo["request_id"] == "req_[key]"
    assert "your key is [key] or [key]" in echo["response_text"]
    streamed = out.row(2, named=True)
    assert streamed["status"] == "ok" and "your key is [key] or [key]" in streamed["response_text"]
    error = out.row(1, named=True)
    assert (error["error_type"], error["request_id"]) == ("[key]", "[key]")
    assert error["error_message"] == "the key [key] is not welcome"
    shown = [done.stdout, done.stderr]
    for command in (
        ["status", str(tmp_path / "out")],
        ["report", str(tmp_path / "out"), "--by", "model,error_type"],
        [
            "report",
            str(tmp_path / "out"),
            "--format",
            "json",
            "--html",
            str(tmp_path / "out" / "r.html"),
        ],
    ):
        shown.append(cli(*command, env=ENV).stdout)
    assert_no_key(tmp_path / "out", *shown)


def test_a_key_echoed_in_errors_is_not_in_the_fail_fast_message(tmp_path, server, cli):
    done, _ = run(cli, tmp_path, server, ["echo-error"] * 24, limits={"concurrency": 2})
    assert done.returncode == 4, done.stderr
    assert "HTTP 400 [key]" in done.stderr
    assert_no_key(tmp_path / "out", done.stdout, done.stderr)


# --- item 9: a trickling answer meets its deadline -----------------------------------


def test_a_trickling_answer_times_out_at_the_attempts_deadline(tmp_path, cli):
    with hostile_server("trickle", interval=0.5) as hostile:
        rows(tmp_path / "in.csv", ["trickle", "trickle"], [16, STREAMED])
        job = label_job(
            tmp_path,
            tmp_path / "in.csv",
            overrides={"max_tokens": "mt"},
            limits={"timeout_s": 2, "stream_timeout_s": 3, "max_retries": 0},
        )
        started = time.monotonic()
        done = cli("run", str(job), "--base-url", hostile.base_url, "--no-progress", env=ENV)
        took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["error_type"].to_list() == ["timeout", "timeout"]
    plain, streamed = out["latency_ms"].to_list()
    assert 1_900 <= plain <= 2_800  # timeout_s bounds the whole attempt, not each byte
    assert 2_900 <= streamed <= 3_800  # a streamed one: stream_timeout_s
    assert "did not complete within 2 s" in out["error_message"][0]
    assert took < 10


# --- item 10: answers too large -------------------------------------------------------


def peak_rss_run(job: Path, base_url: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """`pipeline run` in a child that reports its own peak resident memory (bytes)."""
    code = (
        "import resource, runpy, sys\n"
        "sys.argv = ['pipeline', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('pipeline', run_name='__main__')\n"
        "finally:\n"
        "    print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "run", str(job), "--base-url", base_url, "--no-progress"],
        cwd=REPO,
        env={**os.environ, **ENV},
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK ")]
    return done, int(peak[-1].split()[1]) * 1024


@pytest.mark.process  # a child's own peak memory is what is measured
def test_answers_over_the_cap_are_malformed_and_never_read_whole(tmp_path, server):
    modes = ["huge", "huge-declared", "huge-gzip", "ok"] + ["huge"] * 4
    rows(tmp_path / "in.csv", modes, [16] * len(modes))
    cap = 4 * 1024 * 1024
    job = label_job(
        tmp_path,
        tmp_path / "in.csv",
        overrides={"max_tokens": "mt"},
        limits={"max_answer_bytes": cap, "max_retries": 0, "concurrency": 8},
    )
    baseline_dir = tmp_path / "baseline"
    baseline_dir.mkdir()
    rows(baseline_dir / "in.csv", ["ok"] * len(modes), [16] * len(modes))
    baseline_job = label_job(
        baseline_dir, baseline_dir / "in.csv", overrides={"max_tokens": "mt"},
        limits={"max_answer_bytes": cap, "max_retries": 0, "concurrency": 8},
    )  # fmt: skip
    _, baseline = peak_rss_run(baseline_job, server.base_url)  # the same run, no huge answer
    done, peak = peak_rss_run(job, server.base_url)
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    kinds = out["error_type"].to_list()
    assert kinds[3] is None and out["status"][3] == "ok"
    assert [k for i, k in enumerate(kinds) if i != 3] == ["malformed_answer"] * 7
    assert f"over {cap:,} bytes" in out["error_message"][0]
    assert "bytes declared" in out["error_message"][1]
    # 7 answers of 50 MB each at once: read whole they would take 350 MB more than the
    # same run without them (measured beside it: what the imports and the machine add
    # varies from run to run, the answers' share must not)
    extra = peak - baseline
    assert extra < 120 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB, {extra / 2**20:.0f} MiB over"
    print(f"PEAKS {peak / 2**20:.0f} {baseline / 2**20:.0f}")
