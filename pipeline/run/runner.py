"""Orchestration: source -> render -> limiter -> client -> outcome -> sink, with progress.

`plan.prepare` has done every check that needs no network, so bad input exited 2 before
anything is sent. `Runner` feeds rows to long-lived workers through a bounded queue
(backpressure keeps memory flat), writes outcomes as they finish, and turns every way a run
stops (budget, the API refusing, no success for the patience, a full disk, a signal) into a
clean stop with its exit code.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.errors import (
    Interrupted,
    JobStopped,
    LocalWriteError,
)
from pipeline.labels.extract import Extractor
from pipeline.providers.registry import provider_for
from pipeline.run.outcome import RecordBuilder
from pipeline.run.plan import Plan
from pipeline.run.progress import Progress, RunSummary
from pipeline.run.rowsend import RowSender, api_client, auto_cache, job_transport
from pipeline.send.budget import LocalBudget
from pipeline.send.limits import Limiter
from pipeline.send.transport import Transport
from pipeline.store import durable
from pipeline.store.run_record import write_run_record
from pipeline.store.unrecorded import MaybeBilled, Unrecorded, left_by_dead_run, run_record

GRACE_S = 30.0  # after a stop signal, in-flight requests get this long (PIPELINE_GRACE_S)


class Runner:
    def __init__(
        self,
        plan: Plan,
        transport: Transport,
        *,
        show_progress: bool | None = None,
        limiter: Limiter | None = None,
        budget: Any = None,
        on_row: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """`limiter`, `budget`: shared ones instead of this run's own (a Ray worker's, whose
        pacing and budget are the cluster's); `on_row` hears of every finished row."""
        job = plan.job
        self.plan, self.job, self.transport, self.sink = plan, job, transport, plan.sink
        self.records = RecordBuilder(plan.carried, Extractor(job.extract), plan.prices)
        limits = job.limits
        self.limiter = limiter or Limiter(
            limits.requests_per_minute, limits.input_tokens_per_minute,
            limits.output_tokens_per_minute, limits.tokens_per_minute,
            concurrency=limits.concurrency,
        )  # fmt: skip
        self.on_row = on_row
        provider = provider_for(job.api.format)
        self.client = api_client(job, transport, self.limiter, plan.api_key, provider)
        self.columns = [*plan.carried, *job.template_columns(), *job.overrides.values()]
        total, done_before = self._scope()
        self.progress = Progress(
            total, done_before, total - done_before, show=show_progress,
        )  # fmt: skip
        self._stopping: JobStopped | None = None
        self._tasks: list[asyncio.Task[None]] = []  # what a signal stops: feeder, workers
        # a run that died left requests that may have been billed: counted, and carried on
        self.carried = left_by_dead_run(job.output) or MaybeBilled()
        self.book = Unrecorded(job.output, self.carried)
        spent = plan.resume.spent_usd + plan.resume.unknown_cost_usd + self.carried.worst_usd
        own = LocalBudget(limits.max_cost_usd, spent) if limits.max_cost_usd is not None else None
        marker, gate = auto_cache(job, self.records.prices, total - done_before, self.progress.note)
        self.rows = RowSender(
            job, self.records, self.client, stop=self.stop, budget=budget or own,
            marker=marker, gate=gate, sent=self.progress.requests_sent, book=self.book,
        )  # fmt: skip

    def _scope(self) -> tuple[int, int]:
        """The rows this run covers and how many of them earlier runs finished."""
        plan = self.plan
        if plan.only_rows is not None and not plan.sampled:  # a pilot, --retry-errors
            return len(plan.only_rows), 0
        return plan.source.rows_in_scope, plan.source.done_in_scope(plan.resume.done_rows)

    async def run(self) -> RunSummary:
        started = time.monotonic()
        self.sink.on_write_error = self._write_failed
        self.sink.on_stop = self.stop  # an output URL whose lease is running out
        try:
            await self._run_workers()
        except JobStopped as e:
            self._stopping = self._stopping or e
        except OSError:  # the disk refused even after retries: the sink knows what is kept
            if self.sink.write_error is None:
                raise
        finally:  # no cycle runner -> sink -> runner keeps the plan (and its lock) alive
            self.sink.on_write_error = _ignore
            self.sink.on_stop = _ignore
        if settled := self.limiter.settled():
            self.limiter.note(settled)
        if self.sink.write_error is not None:  # what came of it, now that it is known
            self._stopping = self._write_stop(self.sink.write_error)
        results = None
        if not self.sink.unwritten:
            try:
                results = self.sink.finalize()
            except OSError as e:  # the parts and journals stay: a later run writes it
                self._stopping = self._write_stop(e)
        self.progress.requests = self.client.sent  # with the attempts of rows left to do
        summary = self.progress.summary(
            self.job, results, time.monotonic() - started, self.client, self.limiter,
            input_rows=self.plan.source.total_rows, done_before=len(self.plan.resume.done_rows),
        )  # fmt: skip
        self._maybe_billed(summary)
        self._record_run(summary)
        if isinstance(self._stopping, JobStopped):
            self._stopping.summary = summary
            raise self._stopping
        return summary

    def _maybe_billed(self, summary: RunSummary) -> None:
        """This run's requests that may have been billed unseen or unrecorded."""
        mine, carried = self.book.counts(), self.carried
        summary.unseen_requests = mine.unseen - carried.unseen
        summary.unseen_worst_usd = max(0.0, mine.unseen_usd - carried.unseen_usd)
        summary.unrecorded_requests = mine.unrecorded - carried.unrecorded
        summary.unrecorded_worst_usd = max(0.0, mine.unrecorded_usd - carried.unrecorded_usd)

    def _record_run(self, summary: RunSummary) -> None:
        """run.json, with every worst case counted so far (this run's, a dead run's, earlier
        runs'); then this run's book is not needed any more."""
        mine = self.book.counts()
        earlier = MaybeBilled.from_dict(run_record(self.job.output).get("maybe_billed"))
        record = {
            **summary.to_dict(),
            "maybe_billed": (earlier + mine).to_dict(),
            "run_token": self.book.token,  # the book's file, if left, is this run's: counted
        }
        try:
            write_run_record(
                self.job.output,
                record,
                self._stopping,
                self.job.gold_column,
                self.job.extract.column if self.job.extract.kind in ("text", "choice") else None,
                mine.worst_usd + self.plan.resume.unknown_cost_usd,
            )
        except OSError as e:  # status and report read the parts without it
            self._stopping = self._stopping or self._write_stop(e)
            self.book.close()  # its file stays: the next run counts it
            return
        self.book.discard()

    def _write_failed(self, error: OSError) -> None:
        """The first local write error: send nothing more; answers in flight are paid, so
        they finish and are kept in memory until the disk takes them (sink.close)."""
        self.stop(self._write_stop(error))
        self.progress.note(
            f"{durable.describe(error, self.sink.journal.path)}: sending stopped; paid "
            f"answers are kept in memory and offered to the disk again for up to "
            f"{self.sink.write_retry_s:.0f} s"
        )

    def _write_stop(self, error: OSError) -> LocalWriteError:
        lost = len(self.sink.unwritten)
        kept = (
            f"; {lost:,} paid answers could not be saved and will be sent again"
            if lost
            else "; every paid answer is kept in the journal"
        )
        where = durable.describe(error, self.sink.journal.path)
        return LocalWriteError(f"{where}: {durable.remedy(error)}{kept}")

    async def _run_workers(self) -> None:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(
            maxsize=4 * self.job.limits.concurrency
        )
        workers = [
            asyncio.create_task(self._worker(queue)) for _ in range(self.job.limits.concurrency)
        ]
        syncer = asyncio.create_task(self.sink.keep_synced())
        feeder = asyncio.create_task(self._feed(queue, len(workers)))
        try:
            self._tasks = [feeder, *workers]
            with SignalScope(self.interrupt):
                done, _ = await asyncio.wait(
                    [feeder, *workers], return_when=asyncio.FIRST_EXCEPTION
                )
                for task in done:
                    if not task.cancelled() and (error := task.exception()) is not None:
                        raise error
        finally:
            for task in (feeder, *workers):
                task.cancel()
            await asyncio.gather(feeder, *workers, return_exceptions=True)
            syncer.cancel()
            await self.transport.aclose()  # first: a failing close below must not leak it
            self.progress.close()
            await self.sink.close()

    async def _feed(self, queue: asyncio.Queue[dict[str, Any] | None], workers: int) -> None:
        batches: Iterator[list[dict[str, Any]]] = self.plan.source.batches(
            self.columns, skip=self.plan.resume.done_rows, only=self.plan.only_rows
        )
        while self._stopping is None:
            batch = await asyncio.to_thread(next, batches, None)
            if batch is None:
                break
            for row in batch:
                if self._stopping is not None:
                    break
                await queue.put(row)
        for _ in range(workers):
            await queue.put(None)

    async def _worker(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        while (row := await queue.get()) is not None:
            if self._stopping is not None:
                continue  # drain: rows not started stay unsent, for the resume
            record = await self.rows.process(row)
            if record is None:
                continue
            self.sink.add(record)
            self.progress.row_done(record)
            if self.on_row is not None:
                self.on_row(record)

    def stop(self, reason: JobStopped) -> None:
        """Take no more rows and send nothing more; what is in flight finishes."""
        self._stopping = self._stopping or reason
        self.client.halt()

    def interrupt(self, signal_number: int, grace_s: float | None = None) -> None:
        """A stop signal, here or (a Ray worker) passed on by the driver: a graceful stop;
        the second one cancels what is in flight."""
        self.stop_gracefully(signal_number, self._tasks, grace_s)

    def stop_gracefully(
        self, signal_number: int, workers: list[asyncio.Task[None]], grace_s: float | None = None
    ) -> None:
        if self._stopping is not None and isinstance(self._stopping, Interrupted):
            for task in workers:  # a second signal: cancel what is in flight (and the feeder,
                task.cancel()  # which may wait on a queue nobody drains any more)
            return
        name = signal.Signals(signal_number).name
        self.stop(
            Interrupted(
                f"stopped by {name}; finished rows are saved: run the same command to resume",
                signal_number,
            )
        )
        grace = grace_period() if grace_s is None else grace_s
        self.progress.note(
            f"{name}: finishing the requests in flight (up to {grace:.0f} s);"
            " press Ctrl-C again to cancel them"
        )
        asyncio.get_running_loop().call_later(grace, lambda: [t.cancel() for t in workers])


def grace_period() -> float:
    """How long requests in flight may finish after a stop signal."""
    return float(os.environ.get("PIPELINE_GRACE_S") or GRACE_S)


class SignalScope:
    """SIGINT / SIGTERM call `handler(signal_number)` instead of killing the process, for
    the length of the block (a run's graceful stop; nothing where the loop has none)."""

    def __init__(self, handler: Callable[[int], None]) -> None:
        self.handler = handler
        self.installed: list[int] = []

    def __enter__(self) -> SignalScope:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(number, self.handler, number)
                self.installed.append(number)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (a notebook's worker thread): no handlers
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for number in self.installed:
            loop.remove_signal_handler(number)


def _ignore(what: object) -> None:
    """A write error's or a stop's hook once the run is over: nothing to stop."""
    return None


async def run_plan(
    plan: Plan,
    *,
    transport: Transport | None = None,
    show_progress: bool | None = None,
    **shared: Any,
) -> RunSummary:
    transport = transport or job_transport(plan.job.limits)
    return await Runner(plan, transport, show_progress=show_progress, **shared).run()


__all__ = ["JobStopped", "Runner", "run_plan"]
