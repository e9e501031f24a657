"""`pipeline run --ray [ADDRESS]`: the rows still to do, in shards, on a pool of Ray actors.

The rows still to do are read as a Ray Dataset and split in shards (rows.py). Each worker
actor runs the same Runner as a local run (renderer, client, extractor, pricing) on its
shard's rows, as an output directory of its own under OUTPUT/ray/shard-K (a shared
filesystem on a real cluster): the same journal, parts and resume rules, so a killed worker
loses only its requests in flight and its shard is given to a new actor, which resumes it.
Pacing, requests in flight and budget are the cluster's: one `PoolActor` (actor.py) that
every worker leases capacity from and tells what it saw. The driver then moves each
shard's part files into OUTPUT/parts (a rename: never copied twice, never lost) and writes
the one results.parquet, in input order. A killed driver's shards are moved in by the next
run before it looks at what is left to do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import ray

from pipeline.errors import BudgetReached, JobStopped, UsageError
from pipeline.job.model import Job
from pipeline.ray.actor import NAMESPACE, RayPool, actor_name, start_pool
from pipeline.ray.lease import LeasedLimiter, job_limits
from pipeline.ray.rows import ShardRows, input_dataset, quiet_data
from pipeline.run.plan import Plan, prepare
from pipeline.run.progress import Progress, RunSummary
from pipeline.schema import ROW_INDEX, TOKEN_TOTALS
from pipeline.store import checkpoint, durable
from pipeline.store.layout import RESULTS_FILE, part_files, part_name
from pipeline.store.sink import ResultSink

SHARDS_DIR = "ray"
RESTARTS = 3  # a shard whose worker dies is given to a new one this many times
QUIET: dict[str, Any] = {  # Ray's own chatter stays in its logs; our lines are the output
    "include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
}  # fmt: skip


class ClusterLost(JobStopped):
    """The cluster itself failed under the run: finished rows are kept; resume."""

    exit_code = 4


class ClusterBudget:
    """max_cost_usd across the cluster: a request is sent only while everything spent and
    in flight on every worker, plus its worst case, fits (the pool actor keeps the sums,
    by worker: a worker that dies has its reservations counted as spent)."""

    def __init__(self, pool: RayPool, worker: str) -> None:
        self.pool, self.worker = pool, worker
        self._told: set[asyncio.Task[None]] = set()

    async def reserve(self, worst: Decimal) -> None:
        while not await self.pool.reserve(str(worst), self.worker):
            if Decimal(await self.pool.in_flight_usd()) == 0:
                raise BudgetReached(
                    f"stopped at the budget: the next request could cost up to ${worst:.4f}; "
                    "run again with a higher --max-cost to continue"
                )
            await asyncio.sleep(0.2)  # another worker's request in flight ends first

    def settle(self, worst: Decimal, actual_usd: float | None) -> None:
        actual = None if actual_usd is None else repr(actual_usd)
        call = self.pool.settle(str(worst), actual, self.worker)
        task = asyncio.get_running_loop().create_task(call)
        self._told.add(task)
        task.add_done_callback(self._told.discard)


@dataclass(frozen=True)
class Shard:
    """What a worker is given: its rows (a dataset's blocks), the job's fingerprint (the
    input is not read again) and how many workers share the pool."""

    rows: ShardRows
    settings: dict[str, Any]
    workers: int


@ray.remote
class ShardWorker:
    """One worker: a local run of the job over its shard, paced and budgeted by the pool."""

    async def run(self, job: Job, key: str, shard: Shard, pool: Any, name: str) -> dict[str, Any]:
        return await self._run(job, key, shard, pool, name)  # an async actor: its own loop

    async def _run(
        self, job: Job, key: str, shard: Shard, handle: Any, name: str
    ) -> dict[str, Any]:
        from pipeline.run.runner import run_plan

        quiet_data()
        plan = prepare(job, api_key=key, source=shard.rows, settings=shard.settings)
        workers = shard.workers
        pool = RayPool(handle)
        limiter = LeasedLimiter(
            pool, job_limits(job.limits), workers=workers, concurrency=job.limits.concurrency,
            name=name,
        )  # fmt: skip
        budget = ClusterBudget(pool, name) if job.limits.max_cost_usd is not None else None
        pending = {"ok": 0, "error": 0, "cost": 0.0, "told": 0}

        def tell() -> None:
            sent = limiter.sent - pending["told"]
            handle.tally.remote(pending["ok"], pending["error"], pending["cost"], sent)
            pending.update(ok=0, error=0, cost=0.0, told=limiter.sent)

        def on_row(record: dict[str, Any]) -> None:
            pending[record["status"]] += 1
            pending["cost"] += record.get("cost_usd") or 0.0
            if pending["ok"] + pending["error"] >= 20:
                tell()

        await limiter.join()
        summary: object = None
        stopped, code = None, 0
        try:
            summary = await run_plan(
                plan, show_progress=False, limiter=limiter, budget=budget, on_row=on_row
            )
        except JobStopped as e:
            summary, stopped, code = e.summary, str(e), e.exit_code
        finally:
            tell()
            await limiter.release_unused()
            if plan.lock is not None:
                plan.lock.close()
        summary_dict = summary.to_dict() if isinstance(summary, RunSummary) else None
        return {"summary": summary_dict, "stopped": stopped, "code": code}


def shard_dirs(output: Path) -> list[Path]:
    base = output / SHARDS_DIR
    return sorted(p for p in base.glob("shard-*") if p.is_dir()) if base.is_dir() else []


def merge_shards(plan: Plan) -> None:
    """Every shard's finished rows into OUTPUT/parts: its journals folded, its parts moved
    (renamed, so each row is in exactly one place at every instant)."""
    sink = plan.sink
    for shard in shard_dirs(plan.job.output):
        if not (shard / "job.json").exists():
            continue
        ResultSink(shard, sink.schema)  # folds what a killed worker left in its journal
        (shard / RESULTS_FILE).unlink(missing_ok=True)  # derived from the parts moved below
        for part in part_files(shard):
            target = sink.parts_dir / part_name(sink.next_part_number())
            os.replace(part, target)
            durable.sync_directory(sink.parts_dir)
            durable.sync_directory(part.parent)


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
    stop_cluster = connect(address)
    try:
        merge_shards(plan)  # what a killed driver's workers finished
        before = checkpoint.resume_state(
            plan.job.output, retry_errors=plan.retry_errors
        ).done_rows  # with what a killed driver's workers finished, just moved in
        todo = rows_to_do(plan, before)
        count = workers or default_workers(plan.job.limits.concurrency)
        results = _run_shards(plan, todo, count, show_progress)
        merge_shards(plan)
        path = plan.sink.finalize()
    finally:
        if stop_cluster:
            ray.shutdown()
    try:
        summary = _summary(plan, results, path, time.monotonic() - started, before)
    except JobStopped as e:
        _record_run(plan, e.summary if isinstance(e.summary, RunSummary) else None, e)
        raise
    _record_run(plan, summary, None)
    return summary


def _record_run(plan: Plan, summary: RunSummary | None, stopped: JobStopped | None) -> None:
    """OUTPUT/run.json as a local run writes it (status and report read it; the next run's
    budget counts the answers without usage at their worst case). The shards' own worst
    cases are taken in, then their records dropped, so none is counted twice."""
    if summary is None:
        return
    job, shards = plan.job, shard_dirs(plan.job.output)
    unknown = plan.resume.unknown_cost_usd + sum(checkpoint.unknown_cost_usd(s) for s in shards)
    label = job.extract.column if job.extract.kind in ("text", "choice") else None
    checkpoint.write_run_record(
        job.output, summary.to_dict(), stopped, job.gold_column, label, unknown
    )
    for shard in shards:
        (shard / checkpoint.RUN_RECORD).unlink(missing_ok=True)


def shards_of(plan: Plan, todo: pl.Series, count: int) -> list[Shard]:
    """The rows to do, read as a Ray Dataset and split in `count` (fewer when small)."""
    if not len(todo):
        return []
    job = plan.job
    columns = [*plan.carried, *job.template_columns(), *job.overrides.values()]
    quiet_data()
    dataset = input_dataset(job.input.resolve(), job.id_column, columns, todo)
    parts = [ShardRows.of(plan.source, s) for s in dataset.split(count, equal=False)]
    parts = [p for p in parts if p.total_rows]
    settings = checkpoint.fingerprint(job, plan.prices.version)
    return [Shard(rows, settings, len(parts)) for rows in parts]


def _run_shards(
    plan: Plan, todo: pl.Series, count: int, show_progress: bool | None
) -> list[dict[str, Any]]:
    job = plan.job
    spent = Decimal(str(plan.resume.spent_usd + plan.resume.unknown_cost_usd))
    budget = job.limits.max_cost_usd
    left = str(Decimal(str(budget)) - spent) if budget is not None else None
    shards = shards_of(plan, todo, count)
    pool = start_pool(job.output, job_limits(job.limits), left, job.limits.concurrency)
    progress = Progress(len(todo), 0, len(todo), show=show_progress)
    try:
        return _supervise(plan, shards, pool, progress)
    finally:
        progress.close()
        ray.kill(pool)


def _supervise(plan: Plan, shards: list[Shard], pool: Any, progress: Progress) -> list[Any]:
    """Run every shard to its end; a shard whose worker dies goes to a new worker."""
    job = plan.job

    restarts = dict.fromkeys(range(len(shards)), 0)

    def name_of(index: int) -> str:
        return f"{actor_name(job.output)}-shard-{index}-{restarts[index]}"

    def launch(index: int) -> Any:
        shard = (job.output / SHARDS_DIR / f"shard-{index:04d}").resolve()
        shard_job = replace(job, input=job.input.resolve(), output=shard)  # any worker's cwd
        name = name_of(index)
        worker = ShardWorker.options(name=name, namespace=NAMESPACE).remote()  # type: ignore[attr-defined]
        return worker.run.remote(shard_job, plan.api_key, shards[index], pool, name)

    running = {launch(i): i for i in range(len(shards))}
    results: list[Any] = []
    shown = 0
    while running:
        ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
        try:
            counts = ray.get(pool.progress.remote())
        except (ray.exceptions.RayActorError, ray.exceptions.RaySystemError) as e:
            raise ClusterLost(
                "the Ray cluster lost the job's pacing actor (a node or the cluster went "
                "down): the rows finished are kept in the shards; run the same command to "
                "resume"
            ) from e
        shown = _show(progress, counts, shown, len(running))
        for ref in ready:
            index = running.pop(ref)
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                pool.lost.remote(name_of(index))  # its share and its reservations back
                if restarts[index] >= RESTARTS:
                    raise
                restarts[index] += 1
                progress.note(f"worker of shard {index} died: its rows go to a new worker")
                running[launch(index)] = index
    return results


def _show(progress: Progress, counts: dict[str, Any], shown: int, workers: int) -> int:
    """The pool's tallies on the driver's bar, as a local run shows its own."""
    for note in counts["notes"]:
        progress.note(note)
    done = int(counts["ok"] + counts["error"])
    progress.bar.update(max(0, done - shown))
    minutes = max(time.monotonic() - progress.started, 1e-9) / 60.0
    progress.bar.set_postfix_str(
        f"ok={int(counts['ok']):,} err={int(counts['error']):,} "
        f"{counts['requests'] / minutes:,.0f} req/min ${counts['cost']:,.4f} | {workers} workers"
    )
    return max(shown, done)


def _summary(
    plan: Plan, results: list[dict[str, Any]], path: Path, wall_s: float, before: pl.Series
) -> RunSummary:
    """Counted from the parts (a killed worker's rows are this run's too), not from the
    workers' own summaries."""
    columns = [ROW_INDEX, "status", "label_status", *TOKEN_TOTALS, "cost_usd"]
    scans = [pl.scan_parquet(p).select(columns) for p in part_files(plan.job.output)]
    latest = checkpoint.latest_outcomes(scans)
    now = latest.filter(~pl.col(ROW_INDEX).is_in(before.implode())) if latest.height else latest
    ok = int((now["status"] == "ok").sum()) if now.height else 0
    answered = now.filter(pl.col("status") == "ok") if now.height else now
    invalid = int((answered["label_status"] == "invalid").sum()) if answered.height else 0
    tokens = {c: int(now[c].fill_null(0).sum()) if now.height else 0 for c in TOKEN_TOTALS}
    requests = sum((r["summary"] or {}).get("requests", 0) for r in results)
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
    )  # fmt: skip
    stops = [r for r in results if r.get("stopped")]
    if stops:
        error = JobStopped(stops[0]["stopped"])
        error.exit_code = stops[0]["code"]  # the worker's reason: budget 3, the API 4, ...
        error.summary = summary
        raise error
    return summary
