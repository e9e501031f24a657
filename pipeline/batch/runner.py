"""Batch mode: the rows still to do go to the Message Batches API at half the price.

One pass of `BatchRunner.run`:
1. probe the endpoint (a 404 stops here, exit 2, nothing sent);
2. settle the book: batches of a --simulate run's simulator are gone (their rows to do),
   an intent without an id is looked for in the account's list and adopted, or created;
3. collect every ended batch into the journal and parts, exactly as online rows
   (gather.py: lost batches, short or unreadable results, unknown costs);
4. submit the rows still to do (none in a batch not yet collected), within the budget
   (budget.py): what was spent, every batch not yet collected and every create that may
   have made a batch nobody saw (book.maybe_spent), all at their worst case;
5. wait, polling every `poll_s`, collecting each batch as it ends and sending its
   transient failures again, until none is left; `--detach` exits 5 instead, Ctrl-C 130
   (the batches keep running on the server; a later run collects them). Rows a batch
   returns canceled (`pipeline cancel`) are not sent again by this run: a later one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from decimal import Decimal
from functools import partial
from types import SimpleNamespace
from typing import Any

import orjson
import polars as pl

from pipeline.batch.budget import BatchBudget
from pipeline.batch.gather import Gatherer
from pipeline.batch.http import BatchApi, Clock, check_endpoint
from pipeline.batch.progress import EXPECTED_WAIT, BatchProgress, in_progress
from pipeline.batch.submit import (
    ENVELOPE,
    Creator,
    Pending,
    batch_worst_case,
    compact,
    too_large,
)
from pipeline.cache.prefix import CacheMarker, write_ttl
from pipeline.errors import (
    BatchApiError,
    BudgetReached,
    CreateWithoutId,
    Interrupted,
    JobStopped,
    OutputUnreachable,
    PipelineError,
)
from pipeline.input.render import RequestRenderer
from pipeline.job.template import Unsendable
from pipeline.labels.extract import Extractor
from pipeline.providers.registry import provider_for
from pipeline.run.outcome import RecordBuilder
from pipeline.run.plan import Plan
from pipeline.run.progress import Progress, RunSummary
from pipeline.run.runner import SignalScope
from pipeline.schema import ROW_INDEX
from pipeline.store.book import ABANDONED, ENDED, UNCONFIRMED, BatchBook, Entry, Status
from pipeline.store.run_record import write_run_record
from pipeline.store.unrecorded import MaybeBilled, left_by_dead_run


class BatchRunner:
    def __init__(
        self,
        plan: Plan,
        *,
        detach: bool = False,
        show_progress: bool | None = None,
        transport: Any = None,
        clock: Clock | None = None,
    ) -> None:
        """`transport`: httpx's (a MockTransport in tests); `clock`: the run's time, every
        wait and every time read of batch mode (a fake one in tests)."""
        job = self.job = plan.job
        self.plan, self.sink, self.detach = plan, plan.sink, detach
        self.renderer = RequestRenderer(
            job.request, job.prompt, job.system, job.overrides, job.prompt_after
        )
        self.records = RecordBuilder(plan.carried, Extractor(job.extract), plan.prices)
        self.columns = [*plan.carried, *job.template_columns(), *job.overrides.values()]
        provider = provider_for(job.api.format)
        api = job.api
        headers = provider.request_headers(api.auth, plan.api_key, api.anthropic_version)
        self.api = BatchApi(
            api.base_url, headers, secret=plan.api_key, timeout_s=job.limits.timeout_s,
            connect_timeout_s=job.limits.connect_timeout_s, max_retries=job.limits.max_retries,
            max_line_bytes=job.limits.max_answer_bytes, transport=transport, clock=clock,
        )  # fmt: skip
        self.book = BatchBook(job.output)
        intent_api = {
            "base_url": api.base_url, "api_key_env": api.api_key_env, "auth": api.auth,
            "anthropic_version": api.anthropic_version, "simulated": plan.simulated,
        }  # fmt: skip
        self.tally = Progress(0, 0, 0, show=False)  # rows and costs of this run, for the summary
        self.bar = BatchProgress(show=show_progress, now=self.api.clock.now)
        self.limit = (
            Decimal(str(job.limits.max_cost_usd)) if job.limits.max_cost_usd is not None else None
        )
        # spent before this run (answers without usage at their worst case), then by it
        dead = left_by_dead_run(job.output) or MaybeBilled()  # an online run killed here
        spent = plan.resume.spent_usd + plan.resume.unknown_cost_usd + dead.worst_usd
        self.budget = BatchBudget(self.limit, Decimal(str(spent)), self.book)
        self.creator = Creator(
            self.api, self.book, intent_api, self.bar.note,
            create_timeout_s=job.limits.timeout_s, budget=self.budget,
        )  # fmt: skip
        self.gatherer = Gatherer(
            plan, self.api, self.book, self.records, self.bar, add=self._add,
            finished=lambda: self.finished_now, unknown=self._count_unknown, budget=self.budget,
        )  # fmt: skip
        self.done = plan.resume.done_rows
        self.finished_now: list[int] = []  # rows recorded by this run
        self.unknown_cost = Decimal(0)  # this run's rows of unknown cost, at their worst case
        self.budget_stop: BudgetReached | None = None
        self.stopping: JobStopped | None = None
        self.refused: BatchApiError | None = None  # a create the run cannot follow: no more
        self.canceled: set[int] = set()  # rows batches gave back canceled: not sent again now
        self.watched: list[Entry] = []  # the batches this run waits on (the bar's)
        rows = plan.source.rows_in_scope - len(plan.resume.done_rows)
        self.marker = (  # in a batch, best effort: marked with the 1-hour TTL, no warm-up
            CacheMarker(job, plan.prices, batch=True, rows=rows, say=self.bar.note)
            if job.cache == "auto"
            else None
        )
        self.records.write_ttl = partial(write_ttl, job, self.marker)  # prices unsplit writes

    async def run(self) -> RunSummary:
        started = time.monotonic()
        failure: PipelineError | None = None
        self.sink.on_stop = self.stop  # an output URL whose lease is running out
        try:
            with SignalScope(self.interrupt):
                await self._run()
        except PipelineError as e:  # said as the run's end, after the rows it did are kept
            failure = e
        finally:
            self.sink.on_stop = lambda reason: None  # no cycle sink -> runner -> plan
            await self.api.aclose()
            self.bar.close()
            await self.sink.close()
        results = self.sink.finalize()
        summary = self._summary(results, time.monotonic() - started)
        stop = failure or self.stopping or self.budget_stop or self.refused
        if stop is None and self.canceled:
            self.bar.note(
                f"{len(self.canceled):,} rows were canceled (`pipeline cancel`, or by the "
                "server): this run does not send them again; run the same command to send them"
            )
        if isinstance(stop, Interrupted) and (pending := len(self.book.pending())):
            stop = Interrupted(
                f"{stop}; {pending} batch(es) left running on the server (paid work is kept "
                "there): run the same command to collect them", stop.signal_number,
            )  # fmt: skip
        elif stop is None and self.book.pending():
            stop = in_progress(self.book.pending())
        elif isinstance(stop, OutputUnreachable) and (pending := len(self.book.pending())):
            stop = OutputUnreachable(f"{stop}; {pending} batch(es) left running on the "
                                     "server: the next run collects them")  # fmt: skip
        elif isinstance(stop, BudgetReached) and (pending := len(self.book.pending())):
            stop = BudgetReached(f"{stop}; {pending} batch(es) still in progress on the "
                                 "server: run the same command to collect them")  # fmt: skip
        write_run_record(
            self.job.output, summary.to_dict(), stop, self.job.gold_column,
            self.job.extract.column if self.job.extract.kind in ("text", "choice") else None,
            self.plan.resume.unknown_cost_usd + float(self.unknown_cost),
        )  # fmt: skip
        if stop is not None:
            if isinstance(stop, JobStopped):
                stop.summary = summary
            raise stop
        return summary

    async def _run(self) -> None:
        await check_endpoint(self.api, self.job.api.base_url, self.job.api.api_key_env)
        self.creator.forget_lost_simulators(self.job.api.base_url)
        for entry in self.book.pending():
            if entry.batch_id is None:
                await self._resolve(entry)
        await self._poll_and_collect()
        if not self.stopping:
            await self._submit()
        delay = first_delay = min(1.0, self.job.batch.poll_s)
        while self._waiting() and not self.stopping and not self.detach:
            await self._sleep(delay)
            delay = min(delay * 2, self.job.batch.poll_s)
            if self.stopping:
                break
            if await self._poll_and_collect():
                delay = first_delay
                if not self.stopping and not self.budget_stop:
                    await self._submit()  # what ended in transient failures goes again

    def _waiting(self) -> bool:
        """Batches in progress to wait on (an intent left unconfirmed by a stop of the
        creating, budget or an id never given, is the next run's to look for)."""
        return any(e.batch_id is not None for e in self.book.pending())

    async def _resolve(self, entry: Entry) -> None:
        """An intent whose create was not confirmed: adopt its batch, or create it."""
        if await self.creator.adopt(entry):
            return
        if self.refused is not None or self.canceled:
            return  # no creates in this run: the next one looks for it again
        params = [p for _, p in await asyncio.to_thread(self._render_rows, entry.intent.rows)]
        self.bar.note(f"batch {entry.intent.number}: not on the server; creating it now")
        await self._creating(self.creator.send(entry, params))

    def _render_rows(self, rows: list[int]) -> list[tuple[int, bytes]]:
        """The params of `rows` as a batch sends them (rendered exactly as online)."""
        rendered: dict[int, bytes] = {}
        only = pl.Series(ROW_INDEX, rows, pl.Int64)
        for chunk in self.plan.source.batches(self.columns, only=only):
            for row in chunk:
                body = self._marked(self.renderer.render(row))
                rendered[row[ROW_INDEX]] = compact(orjson.dumps(body))
        return [(r, rendered[r]) for r in rows]

    # -- submitting ---------------------------------------------------------------------

    async def _submit(self) -> None:
        if self.canceled or self.refused is not None:
            return  # cancel stays done; a create the run could not follow stops creating
        tries_used = self.book.tries_used()
        skip = pl.Series(
            ROW_INDEX, [*self.finished_now, *self.book.pending_rows()], pl.Int64
        ).append(self.done)
        chunks = self.plan.source.batches(self.columns, skip=skip, only=self.plan.only_rows)
        pending = Pending()
        while not self.stopping and (chunk := await asyncio.to_thread(next, chunks, None)):
            for row in chunk:
                position = row[ROW_INDEX]
                if (request := self._request(row)) is None:
                    continue  # an error row: it cannot be sent in a batch
                body, params = request
                later = self.plan.job.limits.later_requests  # a cascade stage's
                worst = batch_worst_case(body, params, self.records.prices, self.limit, later)
                try:
                    await self.budget.reserve_row(worst)
                except BudgetReached as e:
                    self.budget_stop = e
                    break
                if pending.rows and (
                    len(pending.rows) >= self.job.batch.max_requests
                    or pending.size + len(params) + 50 > self.creator.max_bytes
                ):
                    await self._create(pending)
                    pending = Pending()
                    if self.refused is not None or self.budget_stop is not None:
                        self.budget.release_rows(worst)  # this row goes in no batch now
                        return
                pending.add(position, tries_used.get(position, 0) + 1, params, worst)
            if self.budget_stop:
                break
        if pending.rows and not self.stopping:  # interrupted: what is not created stays to do
            await self._create(pending)
        elif pending.rows:
            self.budget.release_rows(pending.worst())

    def _request(self, row: dict[str, Any]) -> tuple[dict[str, Any], bytes] | None:
        """The row's body and its params as a batch sends them; None when it cannot be sent
        (unsendable, or larger than a batch may hold): its error row is recorded."""
        try:
            body = self.renderer.render(row)
        except Unsendable as e:
            self._add(self.records.unsent(row, e.error_type, str(e)))
            return None
        body = self._marked(body)
        params = compact(orjson.dumps(body))
        if ENVELOPE + len(params) + 50 > self.creator.max_bytes:
            why = too_large(params, self.creator.max_bytes)
            self._add(self.records.unsent(row, "request_too_large", why))
            return None
        return body, params

    async def _creating(self, creating: Any) -> Any:
        """A create (or re-create) under way: a refused budget or an id never given end
        the creating for this run, not the collecting of the batches already made."""
        try:
            return await creating
        except BudgetReached as e:
            self.budget_stop = e
        except CreateWithoutId as e:
            self.refused = e
            entry = next(x for x in self.book.entries if x.intent.number == e.intent_number)
            self.gatherer.lose(entry, "the create was answered without a batch id")
        return None

    async def _create(self, pending: Pending) -> None:
        made = await self._creating(self.creator.create(pending))
        for entry in made or []:
            how = "adopted" if entry.status is not None and entry.status.adopted else "created"
            self.bar.note(
                f"batch {entry.intent.number}: {entry.batch_id} {how}, "
                f"{len(entry.intent.rows):,} requests ({EXPECTED_WAIT})"
            )

    def _marked(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.marker.mark(body)[0] if self.marker is not None else body

    # -- waiting and collecting ------------------------------------------------------------

    async def _poll_and_collect(self) -> bool:
        """Look at every batch in progress; collect those that ended. True if any ended."""
        ended = False
        for entry in self.book.pending():
            if self.stopping or entry.status is None or entry.batch_id is None:
                continue
            if entry.status.state != ENDED and not await self.gatherer.refresh(entry):
                ended = True  # lost: its rows are to do again
                continue
            if entry.status.state == ENDED:
                await self._collect(entry)
                ended = True
        self.watched = [e for e in self.watched if e.status is None or e.status.state != ABANDONED]
        self.watched += [e for e in self.book.pending() if e not in self.watched]
        self.bar.show_batches(self.watched)
        return ended

    async def _collect(self, entry: Entry) -> None:
        ended = await self.gatherer.collect(entry)
        if ended.stop is not None:
            self.stopping = ended.stop  # not on disk: the batch stays to collect
        elif ended.foreign:
            self._disown(entry)
            await self._resolve(entry)
        self.canceled.update(ended.canceled)

    def _disown(self, entry: Entry) -> None:
        """An adopted batch whose results are another's: this intent is looked for again."""
        before, batch_id = entry.status, entry.batch_id
        assert before is not None and batch_id is not None
        self.bar.note(f"batch {entry.intent.number}: {batch_id} is not this job's")
        entry.status = Status(batch_id=None, state=UNCONFIRMED).carrying(before)
        entry.status.foreign = [*before.foreign, batch_id]  # remembered: never adopted again
        self.book.save(entry)

    def _count_unknown(self, rows: list[int]) -> None:
        """Rows whose cost is unknown (no usage, no readable line): their worst case."""
        if not rows:
            return
        worst = Decimal(0)
        for _, params in self._render_rows(sorted(set(rows))):
            # an unpriced model's rows count 0 (no budget can hold them: none was sent)
            worst += batch_worst_case(orjson.loads(params), params, self.records.prices, None)
        self.unknown_cost += worst
        self.budget.spend(worst)

    def _add(self, record: dict[str, Any]) -> None:
        self.sink.add(record)
        self.finished_now.append(record[ROW_INDEX])
        self.tally.row_done(record)
        cost = record.get("cost_usd")
        if cost:
            self.budget.spend(Decimal(repr(cost)))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(JobStopped):  # the time is up, or a stop ended it
            await self.api.sleep(seconds)

    # -- ending ---------------------------------------------------------------------------

    def interrupt(self, number: int) -> None:
        name = signal.Signals(number).name
        self.stop(Interrupted(f"stopped by {name}", number))

    def stop(self, reason: JobStopped) -> None:
        """No batch created from now on, and every wait ends now, on the server or between
        polls: a signal (`interrupt`), or an output URL whose lease could run out before
        it is renewed (sink.on_stop): a run taking the output over must not find this one
        still creating batches its book at the URL does not name."""
        self.stopping = reason
        self.api.interrupt(reason)

    def _summary(self, results: Any, wall_s: float) -> RunSummary:
        tally = self.tally
        tally.requests = self.creator.requests
        done_before = len(self.plan.resume.done_rows)
        summary = tally.summary(
            self.job, results, wall_s, SimpleNamespace(retries=Counter()),
            SimpleNamespace(cooldowns=0, adjustments=[]),
            input_rows=self.plan.source.total_rows, done_before=done_before,
        )  # fmt: skip
        return summary


__all__ = ["EXPECTED_WAIT", "BatchRunner"]
