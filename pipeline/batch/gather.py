"""Waiting on a run's batches and collecting each one that ends, whatever the server does.

`Gatherer.poll` looks at every batch in progress and collects those that ended:
- a batch's results are downloaded again (at most `DOWNLOADS` times) while fewer rows
  came back than its `request_counts` say it answered (left out, cut short, unreadable);
  then every row still without a line uses a try (collect.unanswered);
- a batch the server no longer knows (404), one stuck in progress past its expiry, or a
  create answered without an id is `lost`: kept in the book (status says so), its rows
  back to do with a try used, its worst case counted in the budget for good
  (book.maybe_spent), while every other batch is collected as usual;
- rows whose cost is unknown (an answer without usage, a billed answer that does not
  parse, a row without a line) are counted at their worst case (`unknown`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from pipeline.batch.budget import BatchBudget
from pipeline.batch.collect import (
    CarriedRows,
    Collected,
    Verdict,
    call_result,
    collect,
    missing_verdict,
    unanswered,
    write_stop,
)
from pipeline.batch.http import BatchApi, unix_time
from pipeline.batch.progress import BatchProgress
from pipeline.batch.submit import request_total, status_of
from pipeline.errors import ApiUnavailable, BatchApiError, LocalWriteError
from pipeline.run.outcome import RecordBuilder
from pipeline.run.plan import Plan
from pipeline.schema import ROW_INDEX
from pipeline.send import retry
from pipeline.store.book import COLLECTED, ENDED, LOST, BatchBook, Entry, Status

DOWNLOADS = 3  # downloads of one batch's results while rows are missing from them
EXPIRY_MARGIN_S = 60.0  # past expires_at by this much and still in progress: expired
GONE = (404, 410)  # the server does not know the batch (deleted, another workspace, 29 days)


@dataclass
class Ended:
    """What collecting one batch came to."""

    foreign: bool = False  # adopted, and another's: its intent is looked for again
    canceled: list[int] = field(default_factory=list)
    stop: LocalWriteError | None = None  # the disk refused its rows: collect it again later


class Gatherer:
    def __init__(
        self,
        plan: Plan,
        api: BatchApi,
        book: BatchBook,
        records: RecordBuilder,
        bar: BatchProgress,
        *,
        add: Callable[[dict[str, Any]], None],
        finished: Callable[[], Collection[int]],
        unknown: Callable[[list[int]], None],
        budget: BatchBudget,
    ) -> None:
        """`add` records a row; `finished` is the rows recorded so far by this run;
        `unknown` counts rows of unknown cost at their worst case; `budget` hears of each
        batch collected or lost."""
        self.plan, self.job, self.api, self.book = plan, plan.job, api, book
        self.records, self.bar, self.budget = records, bar, budget
        self.add, self.finished, self.unknown = add, finished, unknown
        self.said_expired: set[str] = set()

    @property
    def max_retries(self) -> int:
        return self.job.limits.max_retries

    async def refresh(self, entry: Entry) -> bool:
        """The batch's state as the server sees it now; False when it is lost."""
        assert entry.status is not None and entry.batch_id is not None
        try:
            batch = await self.api.get(entry.batch_id)
        except BatchApiError as e:
            if e.status not in GONE:
                raise
            self.lose(entry, f"the server does not know it (HTTP {e.status})")
            return False
        fresh = status_of(batch, adopted=entry.status.adopted).carrying(entry.status)
        if (fresh.state, fresh.counts) != (entry.status.state, entry.status.counts):
            entry.status = fresh
            self.book.save(entry)
        entry.status.polled_at = self.api.clock.now()
        if entry.status.state != ENDED and self._past_expiry(entry.status):
            await self._expire(entry)
            return False
        return True

    def _past_expiry(self, status: Status) -> bool:
        expires = unix_time(status.expires_at)
        now = self.api.clock.now() + self.api.server_offset_s  # in the server's clock
        return expires is not None and now > expires + EXPIRY_MARGIN_S

    async def _expire(self, entry: Entry) -> None:
        """Still in progress past its expiry: canceled if the server will, its rows
        handled as expired (back to do, a try used)."""
        assert entry.batch_id is not None
        if entry.batch_id not in self.said_expired:
            self.said_expired.add(entry.batch_id)
            self.bar.note(
                f"batch {entry.intent.number}: {entry.batch_id} is still in progress past its "
                f"expiry ({entry.status.expires_at if entry.status else '?'}): handled as expired"
            )
        try:
            await self.api.cancel(entry.batch_id)
        except BatchApiError as e:  # its rows go again whatever: the worst case counts it
            self.bar.note(f"batch {entry.intent.number}: could not cancel it: {e}")
        self.lose(entry, "still in progress past its expiry: handled as expired")

    async def collect(self, entry: Entry) -> Ended:
        """Every result of the ended batch `entry` in the journal, or why not."""
        assert entry.status is not None and entry.batch_id is not None
        intent = entry.intent
        rows = await asyncio.to_thread(self._carried_rows, intent.rows)
        before = self._done_before(entry)
        record_of, unknown_rows = self._record_maker(rows, entry.batch_id)
        total = Collected()
        expected = min(len(intent.rows), request_total(entry.status.counts) or len(intent.rows))
        for download in range(DOWNLOADS):
            skip = before | total.seen  # and what this run recorded: _download adds it
            try:
                got = await self._download(entry, skip, record_of)
            except BatchApiError as e:
                if e.status not in GONE:
                    raise
                self.lose(entry, f"its results are gone (HTTP {e.status})")
                return Ended()
            if got.foreign:
                return Ended(foreign=True)
            _merge(total, got)
            received = len(self._judged(entry, before, total))
            if received >= expected or download == DOWNLOADS - 1:
                break
            self.bar.note(
                f"batch {intent.number}: {received:,} of {expected:,} results "
                "came back; downloading them again"
            )
        return await self._settle(entry, total, before, record_of, unknown_rows)

    async def _settle(
        self,
        entry: Entry,
        total: Collected,
        before: set[int],
        record_of: Callable[[int, Verdict, int], dict[str, Any]],
        unknown_rows: list[int],
    ) -> Ended:
        again, exhausted = unanswered(entry, self._judged(entry, before, total), self.max_retries)
        for row, tries in exhausted:
            self.add(record_of(row, missing_verdict(tries), tries))
        await asyncio.to_thread(self.unknown, [*unknown_rows, *(row for row, _ in again)])
        sink = self.plan.sink
        await asyncio.to_thread(sink.journal.sync)
        if sink.write_error is not None or sink.unwritten:
            return Ended(stop=write_stop(sink.write_error, sink.journal.path))
        assert entry.status is not None
        entry.status.state, entry.status.again = COLLECTED, [*total.again, *again]
        self.book.save(entry)
        self.budget.released(entry)  # its rows' costs are spent: its worst case goes
        self.bar.note(_collected_line(entry, total, again, exhausted))
        return Ended(canceled=total.canceled)

    def _done_before(self, entry: Entry) -> set[int]:
        """The batch's rows finished by earlier runs (a crash mid-collection)."""
        positions = pl.Series(ROW_INDEX, entry.intent.rows, pl.Int64)
        return set(positions.filter(positions.is_in(self.plan.resume.done_rows.implode())))

    def _judged(self, entry: Entry, before: set[int], total: Collected) -> set[int]:
        """Rows of the batch with a verdict: before this run, by this collection, or by a
        download broken off and tried again (recorded, not in its `seen`)."""
        return before | total.seen | set(self.finished()).intersection(entry.intent.rows)

    def _record_maker(
        self, rows: CarriedRows, batch_id: str | None
    ) -> tuple[Callable[[int, Verdict, int], dict[str, Any]], list[int]]:
        """record_of(row, verdict, tries), and the list it fills with rows whose cost is
        unknown (answered or billed, no usage to price)."""
        unknown_rows: list[int] = []

        def record_of(row: int, verdict: Verdict, tries: int) -> dict[str, Any]:
            values = rows.of(row)
            requested = values.get(self.job.overrides.get("model", "")) or self.job.model
            result = call_result(verdict, tries)
            record = self.records.from_call(values, str(requested), result)
            if verdict.billed:
                self.records.billed_error(record, str(requested), verdict.usage)
            if record.get("cost_usd") is None and (record["status"] == "ok" or verdict.billed):
                unknown_rows.append(row)
            record["batch_id"] = batch_id
            return record

        return record_of, unknown_rows

    async def _download(
        self, entry: Entry, skip: set[int], record_of: Callable[[int, Verdict, int], Any]
    ) -> Collected:
        """The batch's results, downloaded again after a transient failure (rows recorded
        by the failed attempt are skipped); after max_retries, the run stops (exit 4) with
        the results still on the server."""
        batch_id = entry.batch_id
        assert batch_id is not None

        async def download() -> Collected | BatchApiError:
            try:
                return await collect(
                    entry, self.api.results(batch_id),
                    done=skip | set(self.finished()), max_retries=self.max_retries,
                    scrub=self.api.scrub, record_of=record_of, add=self.add,
                    pause=self.plan.sink.drain_folds,
                )  # fmt: skip
            except BatchApiError as e:
                return e

        async def pause(seconds: float, error: Collected | BatchApiError) -> None:
            self.bar.note(f"{error}: downloading again")
            await self.api.sleep(seconds)

        tried = await retry.retrying(
            download, judge_download, max_retries=self.max_retries, pause=pause,
            now=self.api.clock.now,
        )  # fmt: skip
        if isinstance(tried.outcome, Collected):
            return tried.outcome
        if tried.outcome.status in GONE:
            raise tried.outcome
        raise ApiUnavailable(
            f"could not download the results of {batch_id}: {tried.outcome}; they stay "
            "on the server (29 days): run the same command to collect them"
        ) from tried.outcome

    def lose(self, entry: Entry, why: str) -> None:
        """The batch is gone for us: its rows back to do (a try used; past max_retries an
        error row), its worst case counted for good; kept in the book, for status."""
        judged = self._done_before(entry) | set(self.finished()).intersection(entry.intent.rows)
        again, exhausted = unanswered(entry, judged, self.max_retries)
        if exhausted:  # error rows of unknown cost: counted whole by book.maybe_spent
            rows = self._carried_rows([row for row, _ in exhausted])
            record_of, _ = self._record_maker(rows, entry.batch_id)
            for row, tries in exhausted:
                self.add(record_of(row, missing_verdict(tries), tries))
        before = entry.status
        entry.status = Status(batch_id=entry.batch_id, state=LOST, note=why, again=again).carrying(
            before
        )
        if before is not None:
            entry.status.counts, entry.status.created_at = before.counts, before.created_at
            entry.status.expires_at = before.expires_at
        self.book.save(entry)
        self.budget.lost(entry)
        self.bar.note(
            f"batch {entry.intent.number}: {entry.batch_id or '(no id)'} lost: {why}; "
            f"{len(again):,} of its rows go back to do (a try used), {len(exhausted):,} "
            "out of tries; its worst case stays counted in the budget"
        )

    def _carried_rows(self, rows: list[int]) -> CarriedRows:
        wanted = [*self.plan.carried, *self.job.overrides.values()]
        only = pl.Series(ROW_INDEX, rows, pl.Int64)
        return CarriedRows(self.plan.source.frame_of(wanted, only=only))


def judge_download(outcome: Collected | BatchApiError) -> retry.Verdict:
    """Downloaded, or an error: tried again when `retry.TRANSIENCE` says so."""
    if isinstance(outcome, Collected):
        return retry.Verdict(again=False)
    return retry.Verdict(again=retry.transience(outcome.status).downloaded_again)


def _merge(total: Collected, got: Collected) -> None:
    total.records += got.records
    total.again += got.again
    total.canceled += got.canceled
    total.seen |= got.seen
    total.unread += got.unread


def _collected_line(
    entry: Entry, total: Collected, again: list[list[int]], exhausted: list[tuple[int, int]]
) -> str:
    line = (
        f"batch {entry.intent.number}: {entry.batch_id} collected, "
        f"{total.records + len(exhausted):,} rows; {len(total.again) + len(again):,} to send again"
    )
    if total.canceled:
        line += f" ({len(total.canceled):,} canceled)"
    if total.unread:
        reasons = ", ".join(f"{n:,} {why}" for why, n in total.unread.most_common())
        line += f"; {total.unknown_lines:,} result lines could not be read ({reasons})"
    if again or exhausted:
        line += (
            f"; {len(again) + len(exhausted):,} rows had no readable result line (a try used each)"
        )
    return line
