"""An ended batch's results become output rows, exactly as online answers do.

Each result line is judged by `judge` (a pure function): `succeeded` is an answer, priced
at the batch rate whatever the line says of its tier; `errored` with a transient type and
`expired` go into a later batch until the row has had `max_retries` more tries; other
errors are error rows with the API's type and message; `canceled` rows stay to do without
using a try. Lines arrive in any order and are streamed: the file is never held whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from pipeline.batch.book import Entry, parse_custom_id
from pipeline.errors import LocalWriteError
from pipeline.providers.anthropic import answer_from
from pipeline.providers.base import Answer, MalformedAnswer
from pipeline.providers.sse import STATUS_OF_ERROR
from pipeline.schema import ROW_INDEX
from pipeline.send.client import CallResult
from pipeline.send.scrub import Scrubber
from pipeline.store import durable

# error types worth another batch: the server's trouble, not the request's
TRANSIENT_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})
STATUS_OF = STATUS_OF_ERROR  # the status an online call would have had: http_status
EXPIRED_MESSAGE = "the batch expired (24 h) before this request was processed"


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


def judge(result: Any, tries: int, max_retries: int) -> Verdict:
    """What one result line's `result` means for its row, on the row's try `tries`."""
    kind = result.get("type") if isinstance(result, dict) else None
    if kind == "succeeded":
        return _succeeded(result.get("message"))
    if kind == "canceled":
        return Verdict("canceled")
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
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return Verdict("error", error_type="malformed_answer", error_message="no message content")
    try:
        answer = answer_from(message, message["content"])
    except MalformedAnswer as e:
        return Verdict("error", error_type="malformed_answer", error_message=str(e))
    if answer.usage is not None:  # a batch is billed at the batch rate, whatever it says
        answer = replace(answer, usage=replace(answer.usage, service_tier="batch"))
    message_id = message.get("id")
    return Verdict("ok", answer, message_id if isinstance(message_id, str) else None)


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
    foreign: bool = False  # the results are another batch's: not this intent's
    unknown_lines: int = 0
    costs: list[float | None] = field(default_factory=list)


RecordOf = Callable[[int, Verdict, int], dict[str, Any]]


async def collect(
    entry: Entry,
    lines: AsyncIterator[bytes],
    *,
    done: set[int],
    max_retries: int,
    scrub: Scrubber,
    record_of: RecordOf,
    add: Callable[[dict[str, Any]], None],
    pause: Callable[[], Awaitable[None]] | None = None,
) -> Collected:
    """Judge every result line of `entry`'s batch; `add` each finished row's record.

    Rows of `done` were collected before (a crash mid-collection) and are skipped. Rows of
    the intent that no line names stay to do (returned in `again`, no try used)."""
    intent = entry.intent
    tries: Mapping[int, int] = dict(zip(intent.rows, intent.tries, strict=True))
    seen: set[int] = set()
    out = Collected()
    async for line in lines:
        try:
            parsed = orjson.loads(line)
            named = parse_custom_id(str(parsed["custom_id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            out.unknown_lines += 1
            continue
        if named is None or named[1] != intent.nonce or named[0] not in tries:
            if not out.records and not seen:  # the first line already is not ours
                out.foreign = True
                return out
            out.unknown_lines += 1
            continue
        row = named[0]
        if row in seen or row in done:
            continue
        seen.add(row)
        verdict = _scrubbed(judge(parsed.get("result"), tries[row], max_retries), scrub)
        if verdict.kind in ("again", "canceled"):
            out.again.append([row, tries[row] - (verdict.kind == "canceled")])
            continue
        record = record_of(row, verdict, tries[row])
        add(record)
        out.records += 1
        if pause is not None and out.records % 1000 == 0:
            await pause()  # let the folds keep up
        out.costs.append(record.get("cost_usd"))
    out.again += [
        [row, tries[row] - 1] for row in intent.rows if row not in seen and row not in done
    ]
    return out


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
    return CallResult(None, status, verdict.error_type, verdict.error_message, tries, None, None)


def write_stop(error: OSError | None, journal: Path) -> LocalWriteError:
    """The stop when the disk refused a collected batch's rows: it stays to collect."""
    where = durable.describe(error, journal) if error else "the journal"
    fix = durable.remedy(error) if error else "fix it"
    return LocalWriteError(
        f"{where}: {fix}; the batch's results stay on the server (29 days): run the "
        "same command to collect them"
    )
