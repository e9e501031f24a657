"""Orchestration: source -> render -> limiter -> client -> outcome -> sink, with progress.

`prepare` does every check that needs no network (job, input, columns, key), so bad
input exits 2 before anything is sent. `Runner` then feeds rows to long-lived workers
through a bounded queue (backpressure keeps memory flat) and writes outcomes as they finish.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import (
    ApiRejectsEverything,
    ApiUnavailable,
    BudgetReached,
    Interrupted,
    JobStopped,
    LocalWriteError,
    UsageError,
)
from pipeline.input.render import RequestRenderer, Unsendable
from pipeline.input.source import ROW_INDEX, Source, open_source
from pipeline.job.load import Job, with_options
from pipeline.labels.extract import Extractor
from pipeline.pricing import PriceTable, load_price_table
from pipeline.providers import anthropic, openai
from pipeline.run.outcome import RecordBuilder
from pipeline.run.progress import Progress, RunSummary
from pipeline.send.budget import Budget, worst_case_usd
from pipeline.send.client import ApiClient, CallResult, NotSent
from pipeline.send.limits import Limiter
from pipeline.send.retry import should_retry
from pipeline.send.transport import AiohttpTransport, Transport
from pipeline.store import checkpoint, durable, parts
from pipeline.store.output_dir import check_output_dir
from pipeline.store.sink import RESULT_FIELDS, RESULTS_FILE, ResultSink, output_schema

FAIL_FAST_ANSWERS = 20  # this many identical non-retryable errors first: stop, don't burn on
GRACE_S = 30.0  # after a stop signal, in-flight requests get this long (PIPELINE_GRACE_S)


@dataclass
class Plan:
    """Everything checked and ready; nothing sent yet."""

    job: Job
    source: Source
    api_key: str
    prices: PriceTable
    carried: list[str]  # input columns copied to the output: the id column first
    sink: ResultSink
    resume: checkpoint.ResumeState
    only_rows: pl.Series | None = None  # send only these input positions (a pilot)
    lock: object = None  # the output directory's lock, held while the plan lives


def prepare(
    job: Job,
    *,
    api_key: str | None = None,
    retry_errors: bool = False,
    limit: int | None = None,
    only_rows: Sequence[int] | None = None,
    reparse: bool = False,
    fresh: bool = False,
    set_aside_damaged: bool = False,
) -> Plan:
    """Check everything that needs no network, then (and only then) touch the output
    directory: --fresh, the lock, the fingerprint, and what earlier runs finished."""
    source = open_source(job.input, job.id_column, limit=limit)
    source.require_columns(sorted(job.template_columns()), "the prompt/system template")
    source.require_columns(list(job.keep_columns), "[job] keep_columns")
    source.require_columns(list(job.overrides.values()), "[overrides]")
    carried = list(dict.fromkeys([source.id_column, *job.keep_columns]))
    if job.gold_column:  # the gold labels travel with the output, for the accuracy report
        source.require_columns([job.gold_column], "[job] gold_column")
        carried = list(dict.fromkeys([*carried, job.gold_column]))
    source.require_plain(
        [*carried, *job.template_columns(), *job.overrides.values()],
        "[job] keep_columns / templates / [overrides]",
    )
    labels = Extractor(job.extract).fields()
    clash = {f.name for f in labels} & {*carried, *(f.name for f in RESULT_FIELDS)}
    if clash:
        raise UsageError(
            f"[extract]: label column {sorted(clash)[0]!r} is already a column "
            "of the output; name it differently"
        )
    if api_key is None:
        api_key = api_key_from_env(job.api.api_key_env)
    prices = load_price_table().with_overrides(job.pricing)
    check_output_dir(job, fresh=fresh)  # before anything is created there, or moved
    lock = checkpoint.lock_output(job.output)  # before --fresh moves a directory in use
    if fresh and set_aside(job.output):
        lock.close()
        lock = checkpoint.lock_output(job.output)
    manifest = checkpoint.check_same_job(
        job.output,
        checkpoint.fingerprint(job, prices.version),
        checkpoint.labelling(job),
        reparse=reparse,
        input_path=job.input,
    )
    fields = [pa.field(c, _arrow_type(source.schema, c)) for c in carried]
    sink = ResultSink(  # folds what a crashed run left in journals
        job.output, output_schema(fields, labels), manifest=json.dumps(manifest).encode()
    )
    check_parts(sink, source, set_aside_damaged=set_aside_damaged)
    resume = checkpoint.resume_state(job.output, retry_errors=retry_errors)
    if retry_errors and only_rows is None:  # only what was tried and failed, nothing new
        only_rows = resume.error_rows.to_list()
    only = pl.Series(ROW_INDEX, list(only_rows), pl.Int64) if only_rows is not None else None
    return Plan(job, source, api_key, prices, carried, sink, resume, only, lock)


def check_parts(sink: ResultSink, source: Source, *, set_aside_damaged: bool) -> None:
    """Every part file must read whole before anything is sent: a damaged one would make
    the run pay for rows and then fail at the merge. Named, or (when asked) moved aside;
    its rows are then taken back from results.parquet where it holds them whole, and only
    the rest count as not done and are sent again."""
    damaged = parts.damaged_parts(sink.part_files())
    if not damaged:
        return
    part, why = damaged[0]
    if not set_aside_damaged:
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise UsageError(
            f"{part} is damaged: {why}{more}; run again with --set-aside-damaged to move "
            f"it to {sink.out_dir / parts.DAMAGED_DIR} (kept, not deleted) and send only "
            "its rows again"
        )
    target = parts.set_aside([p for p, _ in damaged], sink.out_dir)
    names = ", ".join(p.name for p, _ in damaged)
    recovered = salvage(sink, source)
    print(
        f"warning: moved damaged {names} to {target}; {recovered:,} of its rows recovered "
        f"from {RESULTS_FILE}, the others will be sent again",
        file=sys.stderr,
    )


def salvage(sink: ResultSink, source: Source) -> int:
    """Rows results.parquet holds that no intact part does (a damaged part's, set aside):
    written as a new part, so they are not paid for again. results.parquet is used only
    when it reads whole with its checksums."""
    results = sink.results_path
    if not results.exists() or parts.damage(results) is not None:
        return 0
    done = [pq.read_table(p, columns=[ROW_INDEX]).column(0) for p in sink.part_files()]
    done_rows = pl.Series(ROW_INDEX, pa.chunked_array(done, pa.int64()) if done else [])
    table = pl.from_arrow(pq.read_table(results))
    assert isinstance(table, pl.DataFrame)
    ids = source.id_positions()
    found = table.join(ids, on=source.id_column, how="inner").filter(
        ~pl.col(ROW_INDEX).is_in(done_rows.implode())
    )
    if found.is_empty():
        return 0
    arrow = found.to_arrow().select(sink.part_schema.names).cast(sink.part_schema)
    final = sink.parts_dir / f"part-{sink.next_part_number():06d}.parquet"
    durable.write_with(final, lambda path: parts.write_parquet(arrow, path))
    return found.height


def set_aside(output: Path) -> Path | None:
    """--fresh: move earlier results to a dated name beside them. Paid work is never deleted."""
    if not output.exists() or not any(output.iterdir()):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = output.with_name(f"{output.name}.old-{stamp}")
    counter = 1
    while target.exists():
        counter += 1
        target = output.with_name(f"{output.name}.old-{stamp}-{counter}")
    os.replace(output, target)
    return target


def api_key_from_env(name: str) -> str:
    for candidate in dict.fromkeys((name, "ANTHROPIC_API_KEY")):
        key = os.environ.get(candidate, "").strip()
        if key:
            return key
    raise UsageError(
        f"no API key: set the environment variable {name} (or ANTHROPIC_API_KEY), or use --simulate"
    )


class FailFast:
    """Stops a job the API rejects wholesale, instead of burning through the file."""

    def __init__(self, api_key_env: str) -> None:
        self.api_key_env = api_key_env
        self.first: list[tuple[int | None, str | None]] = []
        self.settled = False  # an ok answer, or a mixed start: never stop early

    def check(self, result: CallResult) -> None:
        if result.http_status in (401, 403):
            what = "authentication" if result.http_status == 401 else "permission"
            raise ApiRejectsEverything(
                f"the API refused {what} (HTTP {result.http_status} {result.error_type}): "
                f"check the key in ${self.api_key_env} and its access to this model"
            )
        if self.settled:
            return
        if result.answer is not None or should_retry(result.http_status, {}):
            self.settled = result.answer is not None
            return  # retries ran out on a transient error: not a verdict on the requests
        self.first.append((result.http_status, result.error_type))
        if len(set(self.first)) > 1:
            self.settled = True
        elif len(self.first) >= FAIL_FAST_ANSWERS:
            status, kind = self.first[0]
            raise ApiRejectsEverything(
                f"the first {FAIL_FAST_ANSWERS} answers were all HTTP {status} {kind} "
                f"({result.error_message}); stopped instead of sending the rest"
            )


class Runner:
    def __init__(
        self,
        plan: Plan,
        transport: Transport,
        *,
        show_progress: bool | None = None,
    ) -> None:
        job = plan.job
        self.plan, self.job, self.transport, self.sink = plan, job, transport, plan.sink
        carried = plan.carried
        self.renderer = RequestRenderer(job.request, job.prompt, job.system, job.overrides)
        self.records = RecordBuilder(carried, Extractor(job.extract), plan.prices)
        limits = job.limits
        self.limiter = Limiter(
            limits.requests_per_minute, limits.input_tokens_per_minute,
            limits.output_tokens_per_minute, limits.tokens_per_minute,
            concurrency=limits.concurrency,
        )  # fmt: skip
        self.provider = openai if job.api.format == "openai" else anthropic
        headers = anthropic.request_headers(job.api.auth, plan.api_key, job.api.anthropic_version)
        self.client = ApiClient(
            transport,
            self.provider.endpoint(job.api.base_url),
            headers,
            self.limiter,
            max_retries=job.limits.max_retries,
            parse=self.provider.parse_answer,
            secret=plan.api_key,
            deadline_s=limits.timeout_s,
            stream_deadline_s=limits.stream_timeout_s,
            patience_s=limits.rate_limit_patience_s,
        )
        self.columns = [*carried, *job.template_columns(), *job.overrides.values()]
        self.fail_fast = FailFast(job.api.api_key_env)
        done = plan.resume.done_rows
        total = plan.source.rows_in_scope
        done_before = int((done < total).sum())  # with --limit, only the rows in scope
        if plan.only_rows is not None:  # a pilot or --retry-errors: its own rows only
            total, done_before = len(plan.only_rows), 0
        self.progress = Progress(
            total, done_before, total - done_before, show=show_progress,
        )  # fmt: skip
        self._stopping: JobStopped | None = None
        budget = job.limits.max_cost_usd
        spent = plan.resume.spent_usd + plan.resume.unknown_cost_usd
        self.budget = Budget(budget, spent) if budget is not None else None
        self.unknown_cost_usd = Decimal(0)  # this run's answers without usage, worst case

    async def run(self) -> RunSummary:
        started = time.monotonic()
        self.sink.on_write_error = self._write_failed
        try:
            await self._run_workers()
        except JobStopped as e:
            self._stopping = self._stopping or e
        except OSError:  # the disk refused even after retries: the sink knows what is kept
            if self.sink.write_error is None:
                raise
        finally:  # no cycle runner -> sink -> runner keeps the plan (and its lock) alive
            self.sink.on_write_error = _ignore
        if self.limiter.concurrency is not None and (settled := self.limiter.concurrency.settled()):
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
        self._record_run(summary)
        if isinstance(self._stopping, JobStopped):
            self._stopping.summary = summary
            raise self._stopping
        return summary

    def _record_run(self, summary: RunSummary) -> None:
        try:
            checkpoint.write_run_record(
                self.job.output,
                summary,
                self._stopping,
                self.job.gold_column,
                self.job.extract.column if self.job.extract.kind in ("text", "choice") else None,
                float(self.unknown_cost_usd) + self.plan.resume.unknown_cost_usd,
            )
        except OSError as e:  # status and report read the parts without it
            self._stopping = self._stopping or self._write_stop(e)

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
            with _SignalScope(self, [feeder, *workers]):
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
            record = await self._process(row)
            if record is None:
                continue
            self.sink.add(record)
            self.progress.row_done(record)

    async def _process(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The row's output record, or None when it was not sent (the resume sends it)."""
        try:
            body = self.renderer.render(row)
        except Unsendable as e:  # a null cell, a bad override, an empty prompt
            return self.records.unsent(row, e.error_type, str(e))
        payload = orjson.dumps(self.provider.body(body))
        try:
            worst = await self._reserve(body, payload)
        except BudgetReached as e:
            self.stop(e)
            return None
        record = None
        try:
            record = await self._send(row, body, payload)
            if record["status"] == "ok" and record.get("cost_usd") is None:
                self._unknown_cost(body, payload, worst)
            return record
        except NotSent:
            return None
        except ApiUnavailable as e:  # no success for the patience: this row stays to do
            self.stop(e)
            return None
        finally:  # every reservation is settled, or budget waiters would wait for ever
            if self.budget is not None and worst is not None:
                self.budget.settle(worst, record.get("cost_usd") if record else None)

    async def _send(
        self, row: dict[str, Any], body: dict[str, Any], payload: bytes
    ) -> dict[str, Any]:
        input_tokens = anthropic.estimate_input_tokens(body)
        result = await self.client.call(
            payload, input_tokens, int(body["max_tokens"]), stream=self.provider.streamed(body)
        )
        self.progress.requests_sent(result.attempts)
        try:
            self.fail_fast.check(result)
        except ApiRejectsEverything as e:
            self.stop(e)  # nothing more is sent; requests in flight finish and are kept
            if result.http_status in (401, 403):
                raise NotSent from e  # not recorded: a resume with a working key sends it
        return self.records.from_call(row, str(body["model"]), result)

    async def _reserve(self, body: dict[str, Any], payload: bytes) -> Decimal | None:
        if self.budget is None:
            return None
        price = self.records.prices.lookup(str(body["model"]))
        if price is None:
            raise BudgetReached(
                f"cannot keep max_cost_usd: no price for model {body['model']!r}"
                " (add it under [pricing] in the job file)"
            )
        worst = worst_case_usd(body, payload, price)
        await self.budget.reserve(worst)
        return worst

    def _unknown_cost(self, body: dict[str, Any], payload: bytes, worst: Decimal | None) -> None:
        """An answer without usage: its worst case is remembered (run.json), so a later
        run's budget counts it too. (An unpriced model's rows stay unpriced, not counted.)"""
        price = self.records.prices.lookup(str(body["model"]))
        if price is not None:
            self.unknown_cost_usd += (
                worst if worst is not None else worst_case_usd(body, payload, price)
            )

    def stop(self, reason: JobStopped) -> None:
        """Take no more rows and send nothing more; what is in flight finishes."""
        self._stopping = self._stopping or reason
        self.client.halt()

    def stop_gracefully(self, signal_number: int, workers: list[asyncio.Task[None]]) -> None:
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
        grace = float(os.environ.get("PIPELINE_GRACE_S") or GRACE_S)
        self.progress.note(
            f"{name}: finishing the requests in flight (up to {grace:.0f} s);"
            " press Ctrl-C again to cancel them"
        )
        asyncio.get_running_loop().call_later(grace, lambda: [t.cancel() for t in workers])


class _SignalScope:
    """SIGINT / SIGTERM stop taking rows and let in-flight requests finish."""

    def __init__(self, runner: Runner, workers: list[asyncio.Task[None]]) -> None:
        self.runner, self.workers = runner, workers
        self.installed: list[int] = []

    def __enter__(self) -> _SignalScope:
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(number, self.runner.stop_gracefully, number, self.workers)
                self.installed.append(number)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (a notebook's worker thread): no handlers
        return self

    def __exit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for number in self.installed:
            loop.remove_signal_handler(number)


def _ignore(error: OSError) -> None:
    return None


def _arrow_type(schema: pl.Schema, column: str) -> pa.DataType:
    return pl.DataFrame(schema={column: schema[column]}).to_arrow().schema.field(0).type


async def run_plan(
    plan: Plan, *, transport: Transport | None = None, show_progress: bool | None = None
) -> RunSummary:
    limits = plan.job.limits
    transport = transport or AiohttpTransport(
        max_connections=limits.concurrency,
        connect_timeout_s=limits.connect_timeout_s,
        read_timeout_s=limits.timeout_s,  # the longest silence; the client sets deadlines
        max_answer_bytes=limits.max_answer_bytes,
    )
    return await Runner(plan, transport, show_progress=show_progress).run()


__all__ = ["JobStopped", "Plan", "Runner", "prepare", "run_plan", "with_options"]
