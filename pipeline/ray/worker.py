"""A worker of `pipeline run --ray`: a local run of the job over its shard (the same Runner:
journal, parts, resume rules), paced and budgeted by the cluster's PoolActor, and stopped
the way the driver says (a signal passed on, or another worker's stop) as a local run is.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import ray

from pipeline.errors import JobStopped, PipelineError, from_worker
from pipeline.job.model import Job, mirror_of
from pipeline.ray.actor import RayPool
from pipeline.ray.budget import ClusterBudget
from pipeline.ray.lease import LeasedLimiter, job_limits
from pipeline.ray.outage import LeasedOutageWatch
from pipeline.ray.rows import ShardRows
from pipeline.run.plan import prepare
from pipeline.run.progress import RunSummary
from pipeline.run.replicate import pushing
from pipeline.run.rowsend import job_transport
from pipeline.run.runner import Runner
from pipeline.store.remote import Replica

TELL_ROWS = 20  # a worker tells the pool its progress every this many rows


@dataclass(frozen=True)
class Shard:
    """What a worker is given: its rows (a dataset's blocks), the job's fingerprint (the
    input is not read again) and how many workers share the pool."""

    rows: ShardRows
    settings: dict[str, Any]
    workers: int


class Tally:
    """A worker's progress, told to the pool in small sums (the driver's bar, and the
    summary's requests and retries, a dead worker's included up to its last sum)."""

    def __init__(self, handle: Any, limiter: LeasedLimiter) -> None:
        self.handle, self.limiter = handle, limiter
        self.rows: Counter[str] = Counter()
        self.cost = 0.0
        self.told_sent = 0
        self.retries: Counter[str] = Counter()  # the client's, when last told
        self.client_retries: Counter[str] = Counter()

    def row(self, record: dict[str, Any]) -> None:
        self.rows[record["status"]] += 1
        self.cost += record.get("cost_usd") or 0.0
        if self.rows.total() >= TELL_ROWS:
            self.tell()

    def tell(self) -> None:
        sent = self.limiter.sent - self.told_sent
        retries = dict(self.client_retries - self.retries)
        self.handle.tally.remote(self.rows["ok"], self.rows["error"], self.cost, sent, retries)
        self.rows, self.cost, self.told_sent = Counter(), 0.0, self.limiter.sent
        self.retries = Counter(self.client_retries)


def stop_from(name: str, message: str, code: int) -> JobStopped:
    """A worker's stop (its class name, one line, exit code) as its own class again; an
    error that is no stop (a usage error while preparing) is the cause of a JobStopped with
    its line and code, as the run stops on it."""
    error = from_worker(name, message, code)
    if isinstance(error, JobStopped):
        return error
    stop = JobStopped(message)
    stop.exit_code = code
    stop.__cause__ = error
    return stop


@ray.remote
class ShardWorker:
    """One worker (an async actor: `stop` and `interrupt` run beside `run`)."""

    def __init__(self) -> None:
        self.runner: Runner | None = None
        self.asked: list[tuple[str, Any]] = []  # stops that came before the runner
        # Ray warns of any ray.get in an async actor, on whatever thread; the shard's blocks
        # are fetched on the runner's feeding thread (asyncio.to_thread), and the plan's
        # reads come before the loop has anything else to do: the user would read a warning
        # about nothing, once a worker. (This process is this actor's alone.)
        os.environ["RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"] = "0"

    async def run(self, job: Job, key: str, shard: Shard, handle: Any, name: str) -> dict[str, Any]:
        replica, url = None, job.output_url
        if url is not None:  # its shard at the URL, mirrored on this node
            job = replace(job, output=mirror_of(url))
            replica = Replica(url, job.output, job.fold_s)
        try:
            if replica is not None:  # what a worker before it put there (a restart)
                await asyncio.to_thread(replica.pull)
            plan = prepare(job, api_key=key, source=shard.rows, settings=shard.settings)
        except PipelineError as e:  # one line on the driver, never a remote traceback
            return {
                "summary": None,
                "stopped": str(e),
                "code": e.exit_code,
                "error": type(e).__name__,
            }
        pool, limits = RayPool(handle), job.limits
        limiter = LeasedLimiter(
            pool, job_limits(limits), workers=shard.workers, concurrency=limits.concurrency,
            name=name,
        )  # fmt: skip
        budget = None
        if limits.max_cost_usd is not None:
            budget = ClusterBudget(pool, name)
        tally = Tally(handle, limiter)
        await limiter.join()
        runner = Runner(
            plan, job_transport(limits), show_progress=False, limiter=limiter, budget=budget,
            on_row=tally.row,
        )  # fmt: skip
        tally.client_retries = runner.client.retries
        watch = LeasedOutageWatch.instead_of(runner.client.outage, pool, name)
        runner.client.outage = watch  # one outage, one probe at a time, for the cluster
        self.runner = runner
        for how, what in self.asked:
            self._apply(how, what)
        summary: object = None
        stopped, code, error = None, 0, None
        try:
            summary = await pushing(replica, plan.sink, job.fold_s, runner.run())
        except JobStopped as e:
            summary, stopped, code, error = e.summary, str(e), e.exit_code, type(e).__name__
        finally:
            tally.tell()
            await watch.flush()
            await limiter.release_unused()
            if replica is not None:  # its answers to the URL, where the driver takes them
                await asyncio.to_thread(replica.push)
            if plan.lock is not None:
                plan.lock.close()
        summary_dict = summary.to_dict() if isinstance(summary, RunSummary) else None
        return {"summary": summary_dict, "stopped": stopped, "code": code, "error": error}

    def interrupt(self, signal_number: int, grace_s: float) -> None:
        """The driver got SIGINT / SIGTERM: as a local run does (the second one cancels)."""
        self._apply("signal", (signal_number, grace_s))

    def stop(self, message: str, code: int, error: str = "JobStopped") -> None:
        """The run stops elsewhere (a worker lost for good, another worker's stop): no more
        rows, what is in flight finishes. `error`: the stop's class name (errors.py)."""
        self._apply("stop", (message, code, error))

    def _apply(self, how: str, what: Any) -> None:
        if self.runner is None:
            self.asked.append((how, what))
        elif how == "signal":
            self.runner.interrupt(*what)
        else:
            self.runner.stop(stop_from(*what))
