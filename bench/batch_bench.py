"""Batch mode (the Message Batches API) figures, each from `pipeline run` children against
the simulator on loopback.

1. 100k: a 100,000-row job is submitted (`--batch --detach`: render + upload, exit 5), the
   simulator's batch is waited for (not counted), then a second run collects it (download,
   journal, parts, results.parquet). Wall time and peak RSS of each child (its own rusage
   via os.wait4); every row ok and billed exactly once per the simulator's ledger.
2. kill -9 x20: a 5,000-row job in batches of 250 against a simulator that loses 30% of
   create answers is SIGKILLed at seeded random instants (each run a resume of the same
   output) until 20 kills have landed on a live run (a job that completes first is checked
   and a fresh one started); each job is then run to the end. Rows billed other than once,
   rows ok, and whether every row's cost is exactly its ledger tokens at half the
   published Haiku 4.5 prices; where the kills landed (from the simulator's request count
   and the batch book the kill left on disk).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from bench.common import ENV, REPO
from pipeline.batch.book import BATCHES_DIR, ENDED, SETTLED, BatchBook, parse_custom_id
from pipeline.simulator.process import SimulatorProcess

MODEL = "claude-haiku-4-5-20251001"
JOB = """
[job]
input = "{input}"
id_column = "id"
output = "{output}"
keep_columns = ["text"]

[request]
model = "{model}"
max_tokens = 16
prompt = "Review: {{text}}\\nAnswer with one word: positive, negative or neutral."

[limits]
timeout_s = 5  # against a simulator on loopback: a create without an answer is over in 5 s

[batch]
poll_s = 0.2
{batch}

[extract]
kind = "choice"
choices = ["positive", "negative", "neutral"]
"""
PHRASES = [
    "works great, love it, would buy again",
    "stopped working after a week, very poor",
    "it is fine for the price, nothing special",
]
# Haiku 4.5, USD per million tokens: input, output, cache write 5m / 1h, cache read
PRICES = {
    "input_tokens": Decimal(1),
    "output_tokens": Decimal(5),
    "cache_5m_tokens": Decimal("1.25"),
    "cache_1h_tokens": Decimal(2),
    "cache_read_input_tokens": Decimal("0.1"),
}
BATCH_DISCOUNT = Decimal("0.5")
SUBMIT_TARGET_S, COLLECT_TARGET_S, RSS_TARGET_MB = 30.0, 30.0, 500.0
# Loopback needs no proxy, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def make_job(directory: Path, rows: int, batch: str = "") -> Path:
    """A CSV of `rows` reviews (id,text, about 100-byte texts) and a job writing to out/."""
    texts = [(f"review {i}: {PHRASES[i % 3]}. " * 3)[:100] for i in range(rows)]
    frame = pl.DataFrame({"id": [f"r{i:07d}" for i in range(rows)], "text": texts})
    frame.write_csv(directory / "in.csv")
    job = directory / "job.toml"
    job.write_text(
        JOB.format(input=directory / "in.csv", output=directory / "out", model=MODEL, batch=batch)
    )
    return job


def command(job: Path, base_url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pipeline", "run", str(job), "--batch", "--base-url", base_url,
        "--no-progress", *extra,
    ]  # fmt: skip


@dataclass
class Measured:
    wall_s: float
    peak_rss_mb: float
    code: int
    stderr: str


def run_measured(argv: list[str]) -> Measured:
    """One child to its end: wall time, exit code and its own peak RSS (os.wait4)."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return Measured(wall, usage.ru_maxrss / 1024, child.returncode, stderr)


def server_batches(base_url: str) -> list[dict[str, Any]]:
    """Every batch the simulator holds (the list, paged)."""
    found: list[dict[str, Any]] = []
    after = ""
    while True:
        url = f"{base_url}/v1/messages/batches?limit=1000{after}"
        request = urllib.request.Request(url, headers={"x-api-key": "bench"})
        with _OPENER.open(request, timeout=30) as answer:
            page = orjson.loads(answer.read())
        found += page["data"]
        if not page["has_more"]:
            return found
        after = f"&after_id={page['last_id']}"


def wait_all_ended(base_url: str, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        batches = server_batches(base_url)
        if all(b["processing_status"] == "ended" for b in batches):
            return batches
        if time.monotonic() > deadline:
            raise SystemExit(f"simulator batches not ended after {timeout_s:.0f} s")
        time.sleep(0.1)


def billed_rows(ledger: list[dict[str, Any]]) -> Counter[int]:
    """How many times the simulator billed each input row in a batch."""
    rows: Counter[int] = Counter()
    for entry in ledger:
        if entry["endpoint"] == "batch":
            named = parse_custom_id(entry["custom_id"])
            assert named is not None, entry["custom_id"]
            rows[named[0]] += 1
    return rows


def expected_cost(entry: dict[str, Any]) -> Decimal:
    tokens = sum((entry[name] * price for name, price in PRICES.items()), Decimal(0))
    return tokens * BATCH_DISCOUNT / Decimal(1_000_000)


def costs_exact(table: pl.DataFrame, ledger: list[dict[str, Any]]) -> tuple[int, int]:
    """(rows whose cost_usd is exactly their ledger entry's tokens at batch prices, rows)."""
    by_message = {e["message_id"]: e for e in ledger if e["endpoint"] == "batch"}
    exact = 0
    for row in table.select("request_id", "cost_usd").iter_rows(named=True):
        entry = by_message.get(row["request_id"])
        cost = row["cost_usd"]
        if entry is not None and cost is not None and Decimal(repr(cost)) == expected_cost(entry):
            exact += 1
    return exact, table.height


def hundred_k(rows: int = 100_000) -> str:
    with (
        tempfile.TemporaryDirectory() as tmp,
        SimulatorProcess(batch_latency_s=0.0) as sim,
    ):
        job = make_job(Path(tmp), rows)
        submit = run_measured(command(job, sim.base_url, "--detach"))
        if submit.code != 5:
            raise SystemExit(f"submit exited {submit.code}, not 5: {submit.stderr.strip()}")
        waited = time.perf_counter()
        batches = wait_all_ended(sim.base_url)
        waited = time.perf_counter() - waited
        collect = run_measured(command(job, sim.base_url))
        if collect.code != 0:
            raise SystemExit(f"collect exited {collect.code}, not 0: {collect.stderr.strip()}")
        table = pl.read_parquet(Path(tmp) / "out" / "results.parquet")
        ledger = sim.ledger()
    billed = billed_rows(ledger)
    ok = table.filter(pl.col("status") == "ok").height
    once = billed == Counter(range(rows))
    exact, _ = costs_exact(table, ledger)
    peak = max(submit.peak_rss_mb, collect.peak_rss_mb)
    checks = [
        (submit.wall_s < SUBMIT_TARGET_S, f"submit < {SUBMIT_TARGET_S:.0f} s"),
        (collect.wall_s < COLLECT_TARGET_S, f"collect < {COLLECT_TARGET_S:.0f} s"),
        (peak < RSS_TARGET_MB, f"peak < {RSS_TARGET_MB:.0f} MB"),
    ]
    targets = ", ".join(f"{what} {'met' if good else 'NOT MET'}" for good, what in checks)
    verdict = "all met" if all(good for good, _ in checks) else "NOT all met"
    return (
        f"batch {rows // 1000}k: submit {submit.wall_s:.2f} s, collect {collect.wall_s:.2f} s, "
        f"peak RSS {peak:.0f} MB (targets: {targets}; {verdict})\n"
        f"batch {rows // 1000}k detail: submit RSS {submit.peak_rss_mb:.0f} MB, collect RSS "
        f"{collect.peak_rss_mb:.0f} MB; {len(batches)} batch(es) on the server, ended "
        f"{waited:.2f} s after the submit (not counted); results.parquet {table.height:,} "
        f"rows, {ok:,} ok; ledger {sum(billed.values()):,} entries, each row billed exactly "
        f"once: {'yes' if once else 'NO'}; costs exact {exact:,}/{table.height:,}"
    )


def phase_at_kill(out: Path, requests_sent: int, rows: int) -> str:
    """What the run was doing when killed, from the simulator's request count and the book
    on disk (the disk as the kill left it)."""
    if requests_sent == 0:
        return "start-up"
    book = BatchBook(out) if (out / BATCHES_DIR).is_dir() else None
    entries = book.entries if book is not None else []
    if any(e.status is None for e in entries):
        return "submit"  # an intent without a status: a create on its way (or lost)
    submitted = {r for e in entries for r in e.intent.rows}
    if len(submitted) < rows:
        return "submit"
    if any(e.status is not None and e.status.state == ENDED for e in entries):
        return "collect"
    if any(e.status is not None and e.status.state not in SETTLED for e in entries):
        return "wait"
    return "finish"  # everything collected: results.parquet, or a run with nothing to do


def kill_once(
    argv: list[str],
    sim: SimulatorProcess,
    out: Path,
    rows: int,
    rng: random.Random,
    delay_s: tuple[float, float],
) -> str:
    """Start a run and SIGKILL it a seeded random delay after its launch; where it was
    (or how it ended, if it ended first)."""
    before = sim.stats()["requests"]
    child = subprocess.Popen(
        argv, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        code = child.wait(timeout=rng.uniform(*delay_s))
        return f"exited {code} before the kill"
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
        child.wait()
    return phase_at_kill(out, sim.stats()["requests"] - before, rows)


@dataclass
class Tally:
    jobs: int = 0
    twice: int = 0
    rows_ok: int = 0
    rows: int = 0
    exact: int = 0
    batches: int = 0
    adopted: int = 0
    phases: Counter[str] = field(default_factory=Counter)


def one_job(
    sim: SimulatorProcess,
    tmp: Path,
    rows: int,
    rng: random.Random,
    delay_s: tuple[float, float],
    kills_left: int,
    tally: Tally,
) -> None:
    """Kill runs of one fresh job until one completes (or the kills run out), finish it,
    and count what the simulator billed for it."""
    sim.reset()
    job = make_job(tmp, rows, "max_requests = 250")
    out = tmp / "out"
    while kills_left > 0:
        phase = kill_once(command(job, sim.base_url), sim, out, rows, rng, delay_s)
        if phase.startswith("exited"):
            break  # done before its kill: not a kill; the job is checked below
        tally.phases[phase] += 1
        kills_left -= 1
    final = run_measured(command(job, sim.base_url))
    if final.code != 0:
        raise SystemExit(f"the final run exited {final.code}: {final.stderr.strip()}")
    wait_all_ended(sim.base_url)  # a batch left behind would still bill
    ledger = sim.ledger()
    table = pl.read_parquet(out / "results.parquet")
    book = BatchBook(out).entries
    billed = billed_rows(ledger)
    tally.jobs += 1
    tally.twice += sum(1 for n in billed.values() if n > 1) + (rows - len(billed))
    tally.rows_ok += table.filter(pl.col("status") == "ok").height
    tally.rows += rows
    tally.exact += costs_exact(table, ledger)[0]
    tally.batches += len(book)
    tally.adopted += sum(1 for e in book if e.status is not None and e.status.adopted)


def kills(
    count: int = 20,
    rows: int = 5000,
    seed: int = 2026,
    # 20 batches of 250 that take 3 s on the server; runs killed 0.3 .. 2.5 s after their
    # start (a Python start-up is ~0.5 s of it); a job that completes before its kill is
    # checked and a fresh one started, so every one of the `count` kills lands on a live run
    delay_s: tuple[float, float] = (0.3, 2.5),
    latency_s: float = 3.0,
) -> str:
    rng = random.Random(seed)
    started = time.perf_counter()
    tally = Tally()
    with SimulatorProcess(batch_latency_s=latency_s, batch_lose_create_rate=0.3, seed=seed) as sim:
        while sum(tally.phases.values()) < count:
            with tempfile.TemporaryDirectory() as tmp:
                left = count - sum(tally.phases.values())
                one_job(sim, Path(tmp), rows, rng, delay_s, left, tally)
    wall = time.perf_counter() - started
    order = ["start-up", "submit", "wait", "collect", "finish"]
    landed = ", ".join(f"{name} {tally.phases[name]}" for name in order)
    return (
        f"batch kill -9 x{count}: billed twice {tally.twice}, rows ok "
        f"{tally.rows_ok:,}/{tally.rows:,}, costs exact: "
        f"{'yes' if tally.exact == tally.rows else f'no ({tally.exact:,}/{tally.rows:,})'}\n"
        f"batch kill -9 detail: {tally.jobs} job(s) of {rows:,} rows in batches of 250, 30% "
        f"of create answers lost; kills landed in {landed}; {tally.batches} batches "
        f"({tally.adopted} adopted by listing); total wall {wall:.1f} s"
    )


if __name__ == "__main__":
    print(hundred_k(), flush=True)
    print(kills(), flush=True)
