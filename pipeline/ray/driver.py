"""`pipeline run --ray [ADDRESS]`: the rows still to do, in shards, on a pool of Ray actors.

The rows still to do are put in the object store in shards (read.py: as a Ray Dataset
split, past one read task's rows; a worker reads only its shard's blocks, rows.py). Each
worker actor runs the same Runner as a local run (renderer, client, extractor, pricing) on
its shard's rows, as an output directory of its own under OUTPUT/ray/shard-K (a shared
filesystem on a real cluster): the same journal, parts and resume rules, so a killed worker
loses only its requests in flight and its shard is given to a new actor, which resumes it.
Pacing, requests in flight and budget are the cluster's: one `PoolActor` (actor.py) that
every worker leases capacity from and tells what it saw. The driver then moves each
shard's part files into OUTPUT/parts (a rename: never copied twice, never lost) and writes
the one results.parquet, in input order. A killed driver's shards are moved in by the next
run before it looks at what is left to do.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import ray

from pipeline.errors import JobStopped, UsageError
from pipeline.job.model import absolute
from pipeline.ray import read
from pipeline.ray.actor import start_pool
from pipeline.ray.lease import job_limits
from pipeline.ray.rows import ShardRows
from pipeline.ray.supervise import StopSignals, Supervisor
from pipeline.ray.worker import Shard
from pipeline.run.plan import Plan, merge_shards
from pipeline.run.progress import Progress, RunSummary
from pipeline.run.replicate import pull_shards
from pipeline.schema import ROW_INDEX, TOKEN_TOTALS
from pipeline.store import checkpoint
from pipeline.store.layout import RUN_RECORD, SHARDS_DIR, part_files, shard_dirs
from pipeline.store.run_record import unknown_cost_usd, write_run_record
from pipeline.store.unrecorded import MaybeBilled, left_by_dead_run, run_record

QUIET: dict[str, Any] = {  # Ray's own chatter stays in its logs; our lines are the output
    "include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
}  # fmt: skip


def rows_to_do(plan: Plan, done: pl.Series) -> pl.Series:
    positions = plan.source.id_positions()[ROW_INDEX]
    if plan.only_rows is not None:
        positions = positions.filter(positions.is_in(plan.only_rows.implode()))
    return positions.filter(~positions.is_in(done.implode()))


def reachable(address: str) -> None:
    """A one-line error now for an address nobody answers at (ray.init would wait for
    minutes, printing its own retries)."""
    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except ValueError:
        raise UsageError(
            f"--ray {address}: not an address (host:port or ray://host:port)"
        ) from None
    except OSError as e:
        raise UsageError(
            f"--ray {address}: cannot reach the Ray cluster: {e.strerror or e}"
        ) from None


def default_workers(concurrency: int) -> int:
    """The cluster's CPUs, but no more workers than requests in flight: each worker keeps
    at least one in flight, so more would send more at once than the job allows."""
    cpus = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
    return max(1, min(cpus, concurrency))


def worker_count(concurrency: int, asked: int | None, say: Callable[[str], None]) -> int:
    """--workers (or the cluster's CPUs), never more than the job's concurrency: each worker
    keeps at least one request in flight, so more would send more at once than it allows."""
    if asked is None:
        return default_workers(concurrency)
    if asked > concurrency:
        say(
            f"--workers {asked} is above the job's concurrency ({concurrency}): "
            f"{concurrency} workers, one request in flight each at least"
        )
        return concurrency
    return max(1, asked)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def connect(address: str | None) -> bool:
    """ray.init; True when this run started the (local) cluster and must stop it."""
    if ray.is_initialized():
        return False
    if address in (None, "", "local"):
        address = os.environ.get("RAY_ADDRESS") or None  # Ray's own way to name a cluster
    if address is not None:
        reachable(address)
    try:
        if address is None:
            ray.init(num_cpus=os.cpu_count() or 2, **QUIET)
        else:
            ray.init(address=address, **QUIET)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UsageError(f"--ray {address}: cannot reach the Ray cluster: {e}") from None
    return True


def run_on_ray(
    plan: Plan, *, address: str | None, workers: int | None, show_progress: bool | None
) -> RunSummary:
    started = time.monotonic()
    with StopSignals() as signals:
        stop_cluster = connect(address)
        signals.install()  # again: over the SIGTERM handler ray.init put in (it exits 15)
        try:
            _keep_lease(plan)  # ray.init held the event loop, as the steps below do
            pull_shards(plan.job, started=False)
            merge_shards(plan)  # what a killed driver's workers finished
            _keep_lease(plan)
            before = checkpoint.resume_state(
                plan.job.output, retry_errors=plan.retry_errors
            ).done_rows  # with what a killed driver's workers finished, just moved in
            todo = rows_to_do(plan, before)
            count = worker_count(plan.job.limits.concurrency, workers, _say)
            ran = _run_shards(plan, todo, count, show_progress, signals)
            pull_shards(plan.job, started=True)
            merge_shards(plan)  # every row that was answered, whatever stopped the run
            path = plan.sink.finalize()
        finally:
            if stop_cluster:
                ray.shutdown()
        summary = _summary(plan, ran, path, time.monotonic() - started, before)
    _record_run(plan, summary, ran.stop)
    if ran.stop is not None:
        ran.stop.summary = summary
        raise ran.stop
    return summary


def _keep_lease(plan: Plan) -> None:
    """An output URL's lease renewed if due, between the steps before the workers start
    (the supervisor's loop renews it while they run); its stop raised: nothing sent yet."""
    stop = plan.sink.keep_lease()
    if stop is not None:
        raise stop


def _record_run(plan: Plan, summary: RunSummary | None, stopped: JobStopped | None) -> None:
    """OUTPUT/run.json as a local run writes it (status and report read it; the next run's
    budget counts the answers without usage at their worst case). The shards' own worst
    cases are taken in, then their records dropped, so none is counted twice."""
    if summary is None:
        return
    job, shards = plan.job, shard_dirs(plan.job.output)
    # the output's record has the merged shards' too (store.shards.add_unknown_cost)
    unknown = unknown_cost_usd(job.output) + sum(unknown_cost_usd(s) for s in shards)
    label = job.extract.column if job.extract.kind in ("text", "choice") else None
    record = summary.to_dict()
    earlier = run_record(job.output).get("maybe_billed")  # dead workers' and earlier runs'
    if earlier is not None:
        record["maybe_billed"] = earlier
    write_run_record(job.output, record, stopped, job.gold_column, label, unknown)
    for shard in shards:
        (shard / RUN_RECORD).unlink(missing_ok=True)


def shards_of(plan: Plan, todo: pl.Series, count: int) -> list[Shard]:
    """The rows to do in `count` shards (fewer when small): read by the driver when they
    fit one read task, else as a Ray Dataset (read_tasks.py), split."""
    if not len(todo):
        return []
    job = plan.job
    columns = [*plan.carried, *job.template_columns(), *job.overrides.values()]
    path = absolute(job.input)
    if len(todo) <= read.TASK_ROWS:
        blocks = read.driver_shards(path, job.id_column, columns, todo, count)
    else:  # Ray Data imported only here
        from pipeline.ray.read_tasks import dataset_shards

        blocks = dataset_shards(path, job.id_column, columns, todo, count)
    parts = [ShardRows.of(plan.source, rows, refs) for rows, refs in blocks]
    settings = checkpoint.fingerprint(job, plan.prices.version)
    return [Shard(rows, settings, len(parts)) for rows in parts]


def _run_shards(
    plan: Plan, todo: pl.Series, count: int, show_progress: bool | None, signals: StopSignals
) -> Supervisor:
    job = plan.job
    # a local run that died left requests that may have been billed: counted too
    dead = left_by_dead_run(job.output) or MaybeBilled()
    spent = plan.resume.spent_usd + plan.resume.unknown_cost_usd + dead.worst_usd
    budget = job.limits.max_cost_usd
    shards = shards_of(plan, todo, count)
    pool = start_pool(
        job.output, job_limits(job.limits), None if budget is None else str(budget),
        job.limits.concurrency, workers=len(shards), spent_before_usd=str(Decimal(str(spent))),
    )  # fmt: skip  # the concurrency split among the workers planned, from the start
    progress = Progress(len(todo), 0, len(todo), show=show_progress)
    supervisor = Supervisor(plan, shards, pool, progress, signals, job.output / SHARDS_DIR)
    try:
        supervisor.run()
    finally:
        progress.close()
        ray.kill(pool)
    return supervisor


def _summary(
    plan: Plan, ran: Supervisor, path: Path, wall_s: float, before: pl.Series
) -> RunSummary:
    """Counted from the parts (a killed worker's rows are this run's too), not from the
    workers' own summaries; requests, retries and cooldowns from the pool's tallies (a
    dead worker's too)."""
    columns = [ROW_INDEX, "status", "label_status", *TOKEN_TOTALS, "cost_usd"]
    scans = [pl.scan_parquet(p).select(columns) for p in part_files(plan.job.output)]
    latest = checkpoint.latest_outcomes(scans)
    now = latest.filter(~pl.col(ROW_INDEX).is_in(before.implode())) if latest.height else latest
    ok = int((now["status"] == "ok").sum()) if now.height else 0
    answered = now.filter(pl.col("status") == "ok") if now.height else now
    invalid = int((answered["label_status"] == "invalid").sum()) if answered.height else 0
    tokens = {c: int(now[c].fill_null(0).sum()) if now.height else 0 for c in TOKEN_TOTALS}
    told = sum((r["summary"] or {}).get("requests", 0) for r in ran.results)
    requests = max(told, int(ran.counts["requests"]))
    rows = plan.source.total_rows
    summary = RunSummary(
        job=plan.job.name, output_dir=str(plan.job.output), results=str(path), rows_total=rows,
        rows_ok=ok, rows_error=now.height - ok, rows_invalid=invalid, rows_before=len(before),
        rows_remaining=rows - len(before) - now.height, requests=requests,
        cost_usd=float(now["cost_usd"].sum() or 0.0) if now.height else 0.0,
        unpriced_rows=int(now["cost_usd"].is_null().sum()) if now.height else 0,
        wall_s=wall_s, input_tokens=tokens["input_tokens"],
        output_tokens=tokens["output_tokens"],
        cache_creation_input_tokens=tokens["cache_creation_input_tokens"],
        cache_read_input_tokens=tokens["cache_read_input_tokens"],
        retries=dict(ran.counts.get("retries", {})), cooldowns=ran.counts.get("cooldowns", 0),
        adjustments=_pacing(ran, wall_s), stopped=str(ran.stop) if ran.stop else None,
    )  # fmt: skip
    return summary


def _pacing(ran: Supervisor, wall_s: float) -> list[str]:
    """The pool's notes (requests in flight) and each worker's own (limits learned, the send
    rate lowered), each said once, and where the requests in flight settled."""
    lines = list(ran.pacing)
    said = {line.split(" ", 1)[1] for line in lines}
    for result in ran.results:
        for line in (result["summary"] or {}).get("adjustments", []):
            if line.split(" ", 1)[-1] not in said:
                said.add(line.split(" ", 1)[-1])
                lines.append(line)
    if settled := ran.counts.get("settled"):
        lines.append(f"{int(wall_s) // 60}:{int(wall_s) % 60:02d} {settled}")
    return lines
