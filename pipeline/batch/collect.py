"""An ended batch's results become output rows, exactly as online answers do.

Each result line is judged by `judge` (a pure function): `succeeded` is an answer, priced
at the batch rate whatever the line says of its tier; `errored` with a transient type and
`expired` go into a later batch until the row has had `max_retries` more tries; other
errors are error rows with the API's type and message; `canceled` rows stay to do (a try
used, so a row the server keeps canceling ends as an error row). Lines arrive in any order
and are streamed: the file is never held whole.

A line that cannot be read (not JSON, no custom_id, another batch's custom_id) is counted
by its reason and skipped; only a batch adopted from the account's list, none of whose
lines is this intent's, is another's (`foreign`). A row no line answers (left out, cut
short, unreadable) uses a try like any failed one (`unanswered`): it may have been billed,
so it is sent again only within `max_retries`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from pipeline.errors import LocalWriteError
from pipeline.providers.anthropic import answer_from, parse_usage
from pipeline.providers.base import Answer, MalformedAnswer, Usage
from pipeline.providers.sse import STATUS_OF_ERROR
from pipeline.schema import ROW_INDEX
from pipeline.send.client import CallResult
from pipeline.send.scrub import Scrubber
from pipeline.store import durable
from pipeline.store.book import Entry, parse_custom_id

# error types worth another batch: the server's trouble, not the request's
TRANSIENT_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})
STATUS_OF = STATUS_OF_ERROR  # the status an online call would have had: http_status
EXPIRED_MESSAGE = "the batch expired (24 h) before this request was processed"
# the result our download puts in place of a line over max_answer_bytes (http._capped):
# most likely a succeeded answer, billed, whose usage was never read
TOO_LARGE = "answer_too_large"
NOT_ANSWERED = "no_result"  # the error type of a row no line answered, its tries used


class CarriedRows:
    """A batch's input columns carried to its output rows, as one columnar frame (a dict a
    row would hold a 100,000-request batch's cells as Python objects, ~10x the memory)."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame
        self.index = {int(row): i for i, row in enumerate(frame[ROW_INDEX])}

    def of(self, row: int) -> dict[str, Any]:
        return self.frame.row(self.index[row], named=True)


@dataclass(frozen=True)
class Verdict:
    kind: str  # "ok" | "error" | "again" | "canceled"
    answer: Answer | None = None
    message_id: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    # an error row for an answer that was billed (unreadable, too large): its usage when
    # that could be read, else its cost is unknown (null, and its worst case in the budget)
    billed: bool = False
    usage: Usage | None = None


def judge(result: Any, tries: int, max_retries: int) -> Verdict:
    """What one result line's `result` means for its row, on the row's try `tries`."""
    kind = result.get("type") if isinstance(result, dict) else None
    if kind == "succeeded":
        return _succeeded(result.get("message"))
    if kind == TOO_LARGE:
        error_type, message = _error_of(result.get("error"))
        return Verdict("error", error_type=TOO_LARGE, error_message=message, billed=True)
    if kind == "canceled":
        if tries <= max_retries:
            return Verdict("canceled")
        return Verdict(
            "error", error_type="canceled", error_message=f"canceled on each of {tries} tries"
        )
    if kind == "expired":
        error_type, message = "expired", EXPIRED_MESSAGE
    elif kind == "errored":
        error_type, message = _error_of(result.get("error"))
    else:
        return Verdict(
            "error", error_type="malformed_answer", error_message=f"result type {kind!r}"
        )
    transient = error_type == "expired" or error_type in TRANSIENT_TYPES
    if transient and tries <= max_retries:
        return Verdict("again", error_type=error_type, error_message=message)
    return Verdict("error", error_type=error_type, error_message=message)


def _succeeded(message: Any) -> Verdict:
    """An answer; one that does not parse is an error row that was billed all the same."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return _billed_malformed(message, "no message content")
    try:
        answer = answer_from(message, message["content"])
    except MalformedAnswer as e:
        return _billed_malformed(message, str(e))
    if answer.usage is not None:  # a batch is billed at the batch rate, whatever it says
        answer = replace(answer, usage=_at_batch_rate(answer.usage))
    message_id = message.get("id")
    return Verdict("ok", answer, message_id if isinstance(message_id, str) else None)


def _billed_malformed(message: Any, why: str) -> Verdict:
    usage = None
    if isinstance(message, dict):
        try:
            usage = parse_usage(message.get("usage"))
        except MalformedAnswer:
            usage = None
    return Verdict(
        "error",
        error_type="malformed_answer",
        error_message=why,
        billed=True,
        usage=_at_batch_rate(usage) if usage is not None else None,
    )


def _at_batch_rate(usage: Usage) -> Usage:
    return replace(usage, service_tier="batch")


def _error_of(error: Any) -> tuple[str, str]:
    """(type, message) of `{"type": "error", "error": {"type", "message"}}`."""
    inner = error.get("error") if isinstance(error, dict) else None
    if not isinstance(inner, dict):
        inner = error if isinstance(error, dict) else {}
    kind = inner.get("type")
    message = inner.get("message")
    return (
        kind if isinstance(kind, str) and kind else "api_error",
        " ".join(str(message).split()) if message else "",
    )


@dataclass
class Collected:
    records: int = 0
    again: list[list[int]] = field(default_factory=list)  # [row, tries used]
    canceled: list[int] = field(default_factory=list)  # rows among `again` canceled
    seen: set[int] = field(default_factory=set)  # rows of this intent a line judged
    foreign: bool = False  # adopted, and the results are another batch's
    unread: Counter[str] = field(default_factory=Counter)  # lines skipped, by reason

    @property
    def unknown_lines(self) -> int:
        return sum(self.unread.values())


RecordOf = Callable[[int, Verdict, int], dict[str, Any]]


async def collect(
    entry: Entry,
    lines: AsyncIterator[bytes],
    *,
    done: Collection[int],
    max_retries: int,
    scrub: Scrubber,
    record_of: RecordOf,
    add: Callable[[dict[str, Any]], None],
    pause: Callable[[], Awaitable[None]] | None = None,
) -> Collected:
    """Judge every result line of `entry`'s batch; `add` each finished row's record.

    Rows of `done` were judged before (an earlier download, a crash mid-collection) and
    are skipped. Rows no line names are the caller's to settle (`unanswered`)."""
    intent = entry.intent
    tries: Mapping[int, int] = dict(zip(intent.rows, intent.tries, strict=True))
    out = Collected()
    others = 0  # lines naming another batch's request
    async for line in lines:
        row, why, result = _row_of(line, intent.nonce, tries)
        if row is None:
            out.unread[why] += 1
            others += why == OTHERS
            continue
        if row in out.seen or row in done:
            continue
        out.seen.add(row)
        verdict = _scrubbed(judge(result, tries[row], max_retries), scrub)
        if verdict.kind in ("again", "canceled"):
            out.again.append([row, tries[row]])
            if verdict.kind == "canceled":
                out.canceled.append(row)
            continue
        add(record_of(row, verdict, tries[row]))
        out.records += 1
        if pause is not None and out.records % 1000 == 0:
            await pause()  # let the folds keep up
    adopted = entry.status is not None and entry.status.adopted
    out.foreign = adopted and not out.seen and others > 0 and not done
    return out


NOT_JSON, NO_ID, OTHERS = "not JSON", "no custom_id", "another batch's custom_id"


def _row_of(line: bytes, nonce: str, tries: Mapping[int, int]) -> tuple[int | None, str, Any]:
    """The row a result line answers and its result, or None and why it is not one of
    this intent's."""
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, NOT_JSON, None
    found = parsed.get("custom_id") if isinstance(parsed, dict) else None
    named = parse_custom_id(found) if isinstance(found, str) else None
    if named is None:
        return None, (NO_ID if not isinstance(found, str) or not found else OTHERS), None
    if named[1] != nonce or named[0] not in tries:
        return None, OTHERS, None
    return named[0], "", parsed.get("result")


def unanswered(
    entry: Entry, judged: Collection[int], max_retries: int
) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """The rows of `entry` no result line answered, after every download. Each used its
    try (it may have been answered and billed): ([row, tries used] to send again within
    `max_retries`, [(row, tries)] that end as error rows)."""
    again, exhausted = [], []
    for row, tries in zip(entry.intent.rows, entry.intent.tries, strict=True):
        if row in judged:
            continue
        if tries <= max_retries:
            again.append([row, tries])
        else:
            exhausted.append((row, tries))
    return again, exhausted


def missing_verdict(tries: int) -> Verdict:
    """A row whose results never had a readable line, on its last try: an error row whose
    cost is unknown (it may have been answered and billed)."""
    return Verdict(
        "error",
        error_type=NOT_ANSWERED,
        error_message=f"no readable result line for this request on any of its {tries} tries",
        billed=True,
    )


def _scrubbed(verdict: Verdict, scrub: Scrubber) -> Verdict:
    """The key out of every parsed string (a JSON escape can spell it past the raw scrub)."""
    return replace(
        verdict,
        answer=scrub.answer(verdict.answer) if verdict.answer is not None else None,
        message_id=scrub.optional(verdict.message_id),
        error_type=scrub.optional(verdict.error_type),
        error_message=scrub.optional(verdict.error_message),
    )


def call_result(verdict: Verdict, tries: int) -> CallResult:
    """The verdict as the record builder takes an online call's outcome."""
    if verdict.answer is not None:
        return CallResult(verdict.answer, 200, None, None, tries, verdict.message_id, None)
    status = STATUS_OF.get(verdict.error_type or "")
    if verdict.billed:
        status = 200  # answered (and billed), but not as anything readable
    return CallResult(None, status, verdict.error_type, verdict.error_message, tries, None, None)


def write_stop(error: OSError | None, journal: Path) -> LocalWriteError:
    """The stop when the disk refused a collected batch's rows: it stays to collect."""
    where = durable.describe(error, journal) if error else f"writing {journal}"
    fix = durable.remedy(error) if error else "fix it"
    return LocalWriteError(
        f"{where}: {fix}; the batch's results stay on the server (29 days): run the "
        "same command to collect them"
    )
