"""Checkpoint figures, each from one run against the simulator on loopback.

1. Re-charged rows: a 3,000-row job at concurrency 32 is SIGKILLed three times at random
   moments, then resumed to the end; the simulator's ledger counts rows billed twice.
2. Input digest: a streamed sha256 of a 1,000,000-row CSV (every resume checks the whole
   input's content).
3. Resume start-up: an output directory holding 999,000 finished rows of a 1,000,000-row
   input (part files written the way a run writes them) is resumed, five times from the same
   state; the time from starting the command to the first request the simulator sees
   (median; this machine's speed drifts from one second to the next), beside the time to
   start Python and import the libraries a first request needs.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from bench.common import ENV, REPO, command, make_job, run_to_end
from pipeline.simulator.process import SimulatorProcess
from pipeline.store.checkpoint import INPUT_CONTENT, input_identity
from pipeline.store.parts import write_parquet, write_part
from pipeline.store.sink import PART_ROW_GROUP


def recharged_after_kills(kills: int = 3, rows: int = 3000, concurrency: int = 32) -> str:
    rng = random.Random(2026)
    with (
        tempfile.TemporaryDirectory() as tmp,
        SimulatorProcess(latency_ms=300, latency_jitter_ms=200) as sim,
    ):
        job = make_job(Path(tmp), rows, concurrency)
        for _ in range(kills):
            child = subprocess.Popen(
                command(job, sim.base_url), cwd=REPO, env=ENV, stderr=subprocess.DEVNULL
            )
            time.sleep(rng.uniform(2.0, 5.0))
            child.send_signal(signal.SIGKILL)
            child.wait()
        done = run_to_end(job, sim.base_url)
        billed = Counter(entry["prompt_sha256"] for entry in sim.ledger())
        out = pl.read_parquet(Path(tmp) / "out" / "results.parquet")
    assert out.height == rows and out["id"].is_unique().all()
    twice = sum(n - 1 for n in billed.values())
    return (
        f"kill -9 x{kills}, {rows:,} rows, {concurrency} in flight: {len(billed):,} rows "
        f"billed, {twice} billed twice (bound: {kills * concurrency}); last run: "
        f"{done.stderr.splitlines()[0].split(' | ')[0]}"
    )


def resume_startup(rows: int = 1_000_000, done: int = 999_000, tries: int = 5) -> str:
    with tempfile.TemporaryDirectory() as tmp, SimulatorProcess() as sim:
        directory = Path(tmp)
        job = make_job(directory, 1000, 16)
        # a first, real run over 1,000 rows makes the output directory and its schema...
        run_to_end(job, sim.base_url)
        first = next((directory / "out" / "parts").glob("part-*.parquet"))
        part, schema = pl.read_parquet(first), pq.read_schema(first)
        # ...then the input grows to 1,000,000 rows and 999,000 of them are made done
        make_job(directory, rows, 16)
        template = part.head(1)
        for start in range(0, done, 100_000):
            size = min(100_000, done - start)
            block = template.select(pl.all().repeat_by(size).explode()).with_columns(
                pl.int_range(start, start + size).alias("_row"),
                pl.format(
                    "r{}", pl.int_range(start, start + size).cast(pl.String).str.zfill(7)
                ).alias("id"),
            )
            # as the sink writes a part: page checksums, PART_ROW_GROUP rows a row group,
            # its sha256 remembered as intact
            table = block.to_arrow().cast(schema)
            write_part(
                directory / "out" / "parts" / f"part-{start // 100_000 + 2:06d}.parquet",
                lambda path, table=table: write_parquet(table, path, PART_ROW_GROUP),
            )
        _record_grown_input(directory)
        built = directory / "built"
        shutil.copytree(directory / "out", built)
        firsts, floors = [], []
        for _ in range(tries):  # each from the state as built, the floor measured beside
            shutil.rmtree(directory / "out")
            shutil.copytree(built, directory / "out")
            sim.reset()
            started = time.time()
            result = run_to_end(job, sim.base_url)
            wall = time.time() - started
            firsts.append(min(entry["ts"] for entry in sim.ledger()) - started)
            sent = len(sim.ledger())
            floors.append(import_floor())
    each = ", ".join(f"{f:.2f}" for f in firsts)
    return (
        f"resume {done:,} done of {rows:,}: first request {statistics.median(firsts):.2f} s "
        f"after the command started (median of {tries}: {each}); {sent:,} rows sent; whole "
        f"run {wall:.1f} s ({result.stderr.splitlines()[0].split(' | ')[0]}); floor: "
        f"{statistics.median(floors):.2f} s (median; least {min(floors):.2f} s) to start "
        "Python and import polars, pyarrow.parquet and aiohttp, nothing else"
    )


def import_floor() -> float:
    """What no run of ours can start under: a fresh interpreter importing the three
    libraries a first request needs (the input, the parts, the HTTP pool)."""
    started = time.perf_counter()
    code = "import polars, pyarrow.parquet, aiohttp"
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True)
    return time.perf_counter() - started


def _record_grown_input(directory: Path) -> None:
    """The input grew on purpose: job.json records the new content, as a first run would."""
    manifest = directory / "out" / "job.json"
    content = json.loads(manifest.read_text())
    content["settings"][INPUT_CONTENT] = input_identity(directory / "in.parquet")
    manifest.write_text(json.dumps(content))


def input_digest(rows: int = 1_000_000) -> str:
    """What detecting any change to the input costs a resume: a streamed sha256 of it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.csv"
        text = "this blender is loud but it crushes ice well, would buy again "
        pl.DataFrame(
            {"id": [f"r{i:07d}" for i in range(rows)], "text": [f"{text}{i}" for i in range(rows)]}
        ).write_csv(path)
        size = path.stat().st_size
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            input_identity(path)
            timings.append(time.perf_counter() - started)
    best = min(timings)
    return (
        f"input digest (sha256 of the whole file, streamed): {rows:,} rows, "
        f"{size / 1e6:,.0f} MB in {best:.3f} s = {size / 1e6 / best:,.0f} MB/s"
    )


if __name__ == "__main__":
    print(input_digest(), flush=True)
    print(recharged_after_kills(), flush=True)
    print(resume_startup(), flush=True)
