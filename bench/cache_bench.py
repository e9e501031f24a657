"""Prompt caching figures: a 6,000-token shared system prompt, 300 rows, 32 in flight,
300 ms latency, against the simulator's real prefix cache.

- `cache = "auto"`: the pipeline marks the prefix and warms it before the fan-out;
- manual: the user's own cache_control on the system block, 32 sent at once, no warm-up
  (what a hand-written script or a peer tool does);
- uncached: the same job without caching, the baseline both are measured against.
Each line: cache writes and reads (rows with cache_creation / cache_read tokens) and the
cost as a share of the uncached run, from results.parquet (costs exact per row).
"""

from __future__ import annotations

import asyncio
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.api import run_job_async
from pipeline.job.load import job_from_dict
from pipeline.job.options import RunOptions
from pipeline.simulator.process import SimulatorProcess

ROWS, CONCURRENCY, LATENCY_MS = 300, 32, 300.0
GUIDE_TOKENS = 6000
WRITES_TARGET, SHARE_TARGET = 2, Decimal("0.15")


def guide() -> str:
    """~6,000 tokens by the 4-bytes-a-token estimate the simulator counts with."""
    line = "Rule {n}: judge the product itself, not the courier; a fault makes it negative.\n"
    text, n = "", 0
    while len(text) < GUIDE_TOKENS * 4:
        n += 1
        text += line.format(n=n)
    return text


def job(directory: Path, name: str, system: Any, cache: str) -> Any:
    inputs = directory / "in.csv"
    if not inputs.exists():
        texts = [f"review {i}: {'works great' if i % 3 else 'broke'}" for i in range(ROWS)]
        pl.DataFrame({"id": [f"r{i:04d}" for i in range(ROWS)], "text": texts}).write_csv(inputs)
    return job_from_dict({
        "job": {"name": name, "input": str(inputs), "id_column": "id",
                "output": str(directory / name)},
        "request": {"model": "claude-haiku-4-5-20251001", "max_tokens": 8, "cache": cache,
                    "system": system, "prompt": "Review: {text}\nOne word: positive or negative."},
        "limits": {"concurrency": CONCURRENCY},
    })  # fmt: skip


def measure(simulator: SimulatorProcess, run: Any) -> dict[str, Any]:
    simulator.reset()  # a cold cache for each
    summary = asyncio.run(
        run_job_async(
            run, RunOptions(base_url=simulator.base_url, show_progress=False), api_key="bench"
        )
    )
    table = pl.read_parquet(run.output / "results.parquet")
    cost = sum((Decimal(repr(c)) for c in table["cost_usd"].to_list()), Decimal(0))
    return {
        "writes": int((table["cache_creation_input_tokens"] > 0).sum()),
        "reads": int((table["cache_read_input_tokens"] > 0).sum()),
        "cost": cost,
        "ok": summary.rows_ok,
        "wall_s": summary.wall_s,
    }


def main() -> None:
    text = guide()
    marked = [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]
    with (
        tempfile.TemporaryDirectory() as tmp,
        SimulatorProcess(latency_ms=LATENCY_MS) as simulator,
    ):
        directory = Path(tmp)
        base = measure(simulator, job(directory, "uncached", text, "off"))
        auto = measure(simulator, job(directory, "auto", text, "auto"))
        manual = measure(simulator, job(directory, "manual", marked, "off"))
    for name, figures in (("auto", auto), ("manual, no warm-up", manual)):
        share = figures["cost"] / base["cost"]
        line = (
            f"cache {name}: {ROWS} rows, {CONCURRENCY} in flight, {LATENCY_MS:.0f} ms: "
            f"{figures['writes']} cache writes, {figures['reads']} reads, "
            f"${figures['cost']:.6f} = {share:.1%} of the uncached ${base['cost']:.6f}, "
            f"{figures['wall_s']:.1f} s"
        )
        if name == "auto":
            met = figures["writes"] <= WRITES_TARGET and share <= SHARE_TARGET
            line += (
                f" (targets: <= {WRITES_TARGET} writes, <= {SHARE_TARGET:.0%}: "
                f"{'met' if met else 'NOT met'})"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
