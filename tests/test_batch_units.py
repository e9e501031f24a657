"""Batch mode's parts, one at a time: the verdict on a result line, custom_ids, collecting
a batch's lines, the batch book on disk, the Message Batches calls over
httpx.MockTransport, splitting and adopting creates.

Tables of inputs -> expected outputs for the pure functions (in the style of the SDK's
retry tests). No network: every HTTP answer comes from a MockTransport handler.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest

from pipeline.batch import submit
from pipeline.batch.book import (
    ABANDONED,
    BATCHES_DIR,
    COLLECTED,
    ENDED,
    IN_PROGRESS,
    BatchBook,
    Entry,
    Intent,
    Status,
    custom_id,
    parse_custom_id,
)
from pipeline.batch.budget import BatchBudget
from pipeline.batch.collect import (
    EXPIRED_MESSAGE,
    Collected,
    Verdict,
    collect,
    judge,
    missing_verdict,
    unanswered,
    write_stop,
)
from pipeline.batch.gather import judge_download
from pipeline.batch.http import BATCHES_PATH, BatchApi, Clock, judge_call
from pipeline.batch.submit import Creator, Pending, create_body, request_total, status_of
from pipeline.errors import (
    ApiRejectsEverything,
    BatchApiError,
    BudgetReached,
    CreateUnconfirmed,
    UsageError,
)
from pipeline.send.scrub import Scrubber
from tests.conftest import FakeTime

SECRET = "sk-test-SECRET"
BASE = "https://api.example.test"
API_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # the API's rule for a custom_id
NONCE = "0123456789ab"
INTENT_API: dict[str, Any] = {
    "base_url": BASE,
    "api_key_env": "ANTHROPIC_API_KEY",
    "auth": "x-api-key",
    "anthropic_version": "2023-06-01",
}
TRANSIENT = ["overloaded_error", "api_error", "rate_limit_error", "timeout_error"]


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def message(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "msg_01abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "positive"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 12, "output_tokens": 3, "service_tier": "standard"},
    }
    return {**base, **overrides}


def errored(kind: str, text: str = "something went wrong") -> dict[str, Any]:
    return {"type": "errored", "error": {"type": "error", "error": {"type": kind, "message": text}}}


# --- judge ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tier",
    ["standard", "priority", "batch", None, 7],
    ids=["standard", "priority", "batch", "null", "not-a-string"],
)
def test_a_succeeded_line_is_an_answer_billed_at_the_batch_tier(tier: object) -> None:
    usage = {"input_tokens": 12, "output_tokens": 3, "cache_read_input_tokens": 4}
    if tier is not None:
        usage["service_tier"] = tier  # type: ignore[assignment]
    verdict = judge({"type": "succeeded", "message": message(usage=usage)}, 1, 3)
    assert verdict.kind == "ok"
    assert verdict.message_id == "msg_01abc"  # request_id holds the message id
    assert verdict.answer is not None and verdict.answer.text == "positive"
    assert verdict.answer.model == "claude-haiku-4-5"
    assert verdict.answer.usage is not None
    assert verdict.answer.usage.service_tier == "batch"
    assert (verdict.answer.usage.input_tokens, verdict.answer.usage.output_tokens) == (12, 3)
    assert verdict.answer.usage.cache_read_input_tokens == 4
    assert verdict.error_type is None


def test_a_succeeded_line_without_usage_has_no_usage_rather_than_a_made_up_one() -> None:
    verdict = judge({"type": "succeeded", "message": message(usage=None)}, 1, 3)
    assert verdict.kind == "ok" and verdict.answer is not None
    assert verdict.answer.usage is None  # its cost is unknown, not zero


@pytest.mark.parametrize(
    "msg",
    [
        None,
        "a string",
        [],
        {"id": "msg_1"},  # no content
        {"id": "msg_1", "content": "text, not a list"},
        message(usage={"input_tokens": -1, "output_tokens": 3}),  # impossible count
        message(usage={"input_tokens": "12", "output_tokens": 3}),
        message(usage={"input_tokens": 12, "output_tokens": True}),
    ],
    ids=[
        "null",
        "string",
        "list",
        "no-content",
        "content-not-list",
        "negative-count",
        "string-count",
        "bool-count",
    ],
)
def test_a_malformed_succeeded_message_is_an_error_row(msg: object) -> None:
    verdict = judge({"type": "succeeded", "message": msg}, 1, 3)
    assert verdict.kind == "error"
    assert verdict.error_type == "malformed_answer"
    assert verdict.answer is None and verdict.error_message


@pytest.mark.parametrize("kind", TRANSIENT)
@pytest.mark.parametrize(
    ("tries", "max_retries", "expected"),
    [
        (1, 0, "error"),  # no retries allowed: the first failure is final
        (1, 1, "again"),
        (2, 1, "error"),
        (1, 3, "again"),
        (3, 3, "again"),
        (4, 3, "error"),
        (9, 3, "error"),
    ],
)
def test_a_transient_error_goes_again_until_the_retries_are_used(
    kind: str, tries: int, max_retries: int, expected: str
) -> None:
    verdict = judge(errored(kind, "  try\n again  later "), tries, max_retries)
    assert verdict.kind == expected
    assert verdict.error_type == kind
    assert verdict.error_message == "try again later"
    assert verdict.answer is None


@pytest.mark.parametrize("tries", [1, 2, 100])
@pytest.mark.parametrize(
    ("kind", "text", "expected_message"),
    [
        ("invalid_request_error", "max_tokens:  at\n\tmost 64000", "max_tokens: at most 64000"),
        ("authentication_error", "invalid x-api-key", "invalid x-api-key"),
        ("permission_error", "no access", "no access"),
        ("not_found_error", "model: claude-nope", "model: claude-nope"),
        ("request_too_large", "too big", "too big"),
        ("billing_error", "", ""),
    ],
)
def test_a_terminal_error_is_an_error_row_at_once(
    kind: str, text: str, expected_message: str, tries: int
) -> None:
    verdict = judge(errored(kind, text), tries, 8)
    assert verdict == Verdict("error", error_type=kind, error_message=expected_message)


@pytest.mark.parametrize(
    ("tries", "max_retries", "expected"),
    [(1, 2, "again"), (2, 2, "again"), (3, 2, "error"), (1, 0, "error")],
)
def test_an_expired_row_goes_again_then_is_an_expired_error(
    tries: int, max_retries: int, expected: str
) -> None:
    verdict = judge({"type": "expired"}, tries, max_retries)
    assert verdict == Verdict(expected, error_type="expired", error_message=EXPIRED_MESSAGE)


@pytest.mark.parametrize("tries", [1, 2])
def test_a_canceled_row_stays_to_do_within_its_tries(tries: int) -> None:
    assert judge({"type": "canceled"}, tries, 2) == Verdict("canceled")


def test_a_row_canceled_on_every_try_ends_as_an_error_row() -> None:
    verdict = judge({"type": "canceled"}, 4, 3)
    assert (verdict.kind, verdict.error_type, verdict.billed) == ("error", "canceled", False)


@pytest.mark.parametrize(
    "result",
    [{"type": "pending"}, {"type": None}, {}, None, "succeeded", ["succeeded"]],
    ids=["pending", "null-type", "empty", "null", "string", "list"],
)
def test_an_unknown_result_type_is_an_error_row(result: object) -> None:
    verdict = judge(result, 1, 5)
    assert verdict.kind == "error" and verdict.error_type == "malformed_answer"


# --- custom_id -----------------------------------------------------------------------------


@pytest.mark.parametrize("row", [0, 1, 41, 99_999, 2**31, 2**63 - 1])
def test_custom_id_round_trips_and_is_a_valid_api_custom_id(row: int) -> None:
    text = custom_id(row, NONCE)
    assert API_ID.match(text), text
    assert parse_custom_id(text) == (row, NONCE)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "r1",
        "r1-",
        "1-0123456789ab",
        "x1-0123456789ab",
        "r-1-0123456789ab",
        "r1-0123456789a",  # 11 hex digits
        "r1-0123456789abc",  # 13
        "r1-0123456789AB",  # the nonce is lower-case hex
        "r1-0123456789ag",
        "r1_0123456789ab",
        "r12345678901234567890-0123456789ab",  # 20 digits: beyond int64
        "request-1",
        "my-own-id-7",
        " r1-0123456789ab",
    ],
)
def test_parse_custom_id_rejects_ids_it_did_not_make(text: str) -> None:
    assert parse_custom_id(text) is None


# --- collect -------------------------------------------------------------------------------


def make_entry(rows: list[int], tries: list[int] | None = None, nonce: str = NONCE) -> Entry:
    intent = Intent(
        number=1,
        nonce=nonce,
        rows=rows,
        tries=tries if tries is not None else [1] * len(rows),
        intent_at=1_700_000_000.0,
        worst_usd="0.5",
        **INTENT_API,
    )
    return Entry(intent, Status(batch_id="msgbatch_1", state=ENDED))


def line(row: int, result: dict[str, Any], nonce: str = NONCE) -> bytes:
    return orjson.dumps({"custom_id": custom_id(row, nonce), "result": result})


def ok(text: str = "positive") -> dict[str, Any]:
    return {"type": "succeeded", "message": message(content=[{"type": "text", "text": text}])}


async def lines_of(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        await asyncio.sleep(0)
        yield item


def run_collect(
    entry: Entry,
    items: Iterable[bytes],
    *,
    done: set[int] | None = None,
    max_retries: int = 2,
    secret: str | None = None,
) -> tuple[Collected, list[dict[str, Any]]]:
    added: list[dict[str, Any]] = []

    def record_of(row: int, verdict: Verdict, tries: int) -> dict[str, Any]:
        return {"row": row, "verdict": verdict, "tries": tries, "cost_usd": 0.25}

    result = asyncio.run(
        collect(
            entry,
            lines_of(items),
            done=done or set(),
            max_retries=max_retries,
            scrub=Scrubber(secret),
            record_of=record_of,
            add=added.append,
        )
    )
    return result, added


def test_collect_records_rows_whatever_order_the_lines_come_in() -> None:
    entry = make_entry([10, 11, 12, 13])
    items = [line(13, ok("d")), line(10, ok("a")), line(12, ok("c")), line(11, ok("b"))]
    result, added = run_collect(entry, items)
    texts = {r["row"]: r["verdict"].answer.text for r in added}
    assert texts == {10: "a", 11: "b", 12: "c", 13: "d"}
    assert result.records == 4 and result.again == [] and not result.foreign
    assert result.seen == {10, 11, 12, 13} and result.unknown_lines == 0


def test_collect_skips_rows_already_done() -> None:
    entry = make_entry([1, 2, 3])
    result, added = run_collect(entry, [line(1, ok()), line(2, ok()), line(3, ok())], done={2})
    assert sorted(r["row"] for r in added) == [1, 3]
    assert result.records == 2
    assert result.again == []  # a done row is not sent again either


NOT_OURS = [
    line(1, ok(), nonce="fedcba987654"),  # another intent's batch
    orjson.dumps({"custom_id": "someone-elses-7", "result": ok()}),
    line(99, ok()),  # our nonce, a row this intent never had
]
NOT_OURS_IDS = ["other-nonce", "foreign-id", "row-not-in-intent"]


def adopted(entry: Entry) -> Entry:
    assert entry.status is not None
    entry.status.adopted = True
    return entry


@pytest.mark.parametrize("stray", NOT_OURS, ids=NOT_OURS_IDS)
def test_collect_a_batch_we_created_is_never_foreign_whatever_its_first_line(stray: bytes) -> None:
    """Judging our own batch foreign made the run create it again and again (every row
    billed 10 times): a stray first line is counted and skipped."""
    entry = make_entry([1, 2])
    result, added = run_collect(entry, [stray, line(1, ok()), line(2, ok())])
    assert not result.foreign
    assert sorted(r["row"] for r in added) == [1, 2] and result.unknown_lines == 1


def test_collect_a_created_batch_whose_first_line_is_too_large_is_still_ours() -> None:
    entry = make_entry([1, 2])
    too_large = orjson.dumps({"custom_id": "", "result": {"type": "answer_too_large"}})
    result, added = run_collect(entry, [too_large, line(1, ok()), line(2, ok())])
    assert not result.foreign and result.unread == {"no custom_id": 1}
    assert sorted(r["row"] for r in added) == [1, 2]


@pytest.mark.parametrize("stray", NOT_OURS, ids=NOT_OURS_IDS)
def test_collect_an_adopted_batch_with_no_line_of_ours_is_foreign(stray: bytes) -> None:
    entry = adopted(make_entry([1, 2]))
    result, added = run_collect(entry, [stray, line(2, ok(), nonce="fedcba987654")])
    assert result.foreign is True
    assert added == [] and result.records == 0 and result.again == []


def test_collect_an_adopted_batch_with_lines_of_ours_is_ours_whatever_comes_first() -> None:
    entry = adopted(make_entry([1, 2]))
    result, added = run_collect(entry, [NOT_OURS[0], line(1, ok()), line(2, ok())])
    assert not result.foreign and sorted(r["row"] for r in added) == [1, 2]


def test_collect_a_stray_line_after_ours_is_counted_not_foreign() -> None:
    entry = make_entry([1, 2])
    items = [line(1, ok()), line(5, ok(), nonce="fedcba987654"), b"not json", line(2, ok())]
    result, added = run_collect(entry, items)
    assert not result.foreign
    assert sorted(r["row"] for r in added) == [1, 2]
    assert result.unknown_lines == 2


def test_collect_gives_back_what_goes_again_with_the_tries_it_used() -> None:
    entry = make_entry([1, 2, 3, 4, 5, 6, 7], tries=[1, 2, 3, 2, 1, 4, 2])
    items = [
        line(1, errored("overloaded_error")),  # transient, retries left: again, try used
        line(2, {"type": "expired"}),  # same
        line(3, errored("api_error")),  # try 3 > max_retries 2: an error row
        line(4, {"type": "canceled"}),  # stays to do, a try used (not canceled for ever)
        line(5, errored("invalid_request_error", "bad")),  # terminal: error row
        line(6, ok()),
        # row 7: no line names it: the caller's (unanswered)
    ]
    result, added = run_collect(entry, items, max_retries=2)
    assert sorted(result.again) == [[1, 1], [2, 2], [4, 2]] and result.canceled == [4]
    recorded = {r["row"]: (r["verdict"].kind, r["verdict"].error_type, r["tries"]) for r in added}
    assert recorded == {
        3: ("error", "api_error", 3),
        5: ("error", "invalid_request_error", 1),
        6: ("ok", None, 4),
    }
    assert result.records == 3


def test_rows_no_line_answered_use_a_try_and_end_as_errors_past_the_retries() -> None:
    """Left out, cut short or unreadable, a row may have been billed: a try each, so no
    row is bought more than max_retries + 1 times (they were bought up to 18)."""
    entry = make_entry([1, 2, 3, 4], tries=[3, 1, 2, 2])
    result, added = run_collect(entry, [line(2, ok())], done={3})
    again, exhausted = unanswered(entry, result.seen | {3}, max_retries=2)
    assert (again, exhausted) == ([[4, 2]], [(1, 3)])
    assert [r["row"] for r in added] == [2]
    verdict = missing_verdict(3)
    assert (verdict.kind, verdict.billed, verdict.error_type) == ("error", True, "no_result")


def test_an_empty_results_file_gives_every_row_back_with_a_try_used() -> None:
    entry = make_entry([4, 5], tries=[1, 2])
    result, added = run_collect(entry, [])
    assert (result.seen, added, result.foreign) == (set(), [], False)
    assert unanswered(entry, result.seen, max_retries=2) == ([[4, 1], [5, 2]], [])


def test_collect_a_duplicate_line_is_recorded_once() -> None:
    entry = make_entry([1, 2])
    items = [line(1, ok("first")), line(2, ok()), line(1, ok("second")), line(1, ok("third"))]
    result, added = run_collect(entry, items)
    assert [r["row"] for r in added].count(1) == 1
    assert next(r for r in added if r["row"] == 1)["verdict"].answer.text == "first"
    assert result.records == 2


def test_collect_a_duplicate_of_a_row_sent_again_does_not_also_record_it() -> None:
    entry = make_entry([1])
    result, added = run_collect(entry, [line(1, errored("overloaded_error")), line(1, ok())])
    assert result.again == [[1, 1]] and added == []


def test_collect_scrubs_the_key_from_an_answer() -> None:
    entry = make_entry([1])
    _, added = run_collect(entry, [line(1, ok(f"the key is {SECRET}"))], secret=SECRET)
    answer = added[0]["verdict"].answer
    assert SECRET not in answer.text and SECRET not in answer.content_json


def test_collect_scrubs_the_key_from_an_error_message_spelled_with_a_json_escape() -> None:
    entry = make_entry([1])
    escaped = SECRET.replace("S", "\\u0053")  # JSON for the same string
    raw = (
        b'{"custom_id":"' + custom_id(1, NONCE).encode() + b'","result":{"type":"errored",'
        b'"error":{"type":"error","error":{"type":"invalid_request_error",'
        b'"message":"bad key ' + escaped.encode() + b'"}}}}'
    )
    assert orjson.loads(raw)["result"]["error"]["error"]["message"] == f"bad key {SECRET}"
    _, added = run_collect(entry, [Scrubber(SECRET).raw(raw)], secret=SECRET)
    assert SECRET not in (added[0]["verdict"].error_message or "")


# --- BatchBook -----------------------------------------------------------------------------


def intent_for(book: BatchBook, rows: list[int], tries: list[int] | None = None) -> Entry:
    return book.write_intent(
        rows, tries or [1] * len(rows), Decimal("0.125"), request_bytes=1000, **INTENT_API
    )


def test_an_intent_is_on_disk_and_reads_back_as_unconfirmed(tmp_path: Path) -> None:
    book = BatchBook(tmp_path)
    before = time.time()
    entry = intent_for(book, [3, 1, 2], [1, 2, 1])
    again = BatchBook(tmp_path)
    assert len(again.entries) == 1
    read = again.entries[0]
    assert read.status is None and read.batch_id is None and not read.settled
    assert read.intent == entry.intent
    assert (read.intent.rows, read.intent.tries) == ([3, 1, 2], [1, 2, 1])
    assert read.intent.worst == Decimal("0.125")
    assert before <= read.intent.intent_at <= time.time()
    assert re.fullmatch(r"[0-9a-f]{12}", read.intent.nonce)
    assert API_ID.match(custom_id(3, read.intent.nonce))
    assert again.pending_rows() == [3, 1, 2]


def test_intents_are_numbered_and_each_has_its_own_nonce(tmp_path: Path) -> None:
    book = BatchBook(tmp_path)
    first, second = intent_for(book, [1]), intent_for(book, [2])
    third = intent_for(BatchBook(tmp_path), [3])  # numbering continues after a restart
    assert [first.intent.number, second.intent.number, third.intent.number] == [1, 2, 3]
    assert len({first.intent.nonce, second.intent.nonce, third.intent.nonce}) == 3
    assert [e.intent.rows for e in BatchBook(tmp_path).entries] == [[1], [2], [3]]


def test_a_saved_status_reads_back(tmp_path: Path) -> None:
    book = BatchBook(tmp_path)
    entry = intent_for(book, [1, 2])
    entry.status = Status(
        batch_id="msgbatch_01",
        state=IN_PROGRESS,
        adopted=True,
        counts={"processing": 1, "succeeded": 1},
        created_at="2026-01-01T00:00:00Z",
        expires_at="2026-01-02T00:00:00Z",
        polled_at=123.5,
        again=[[2, 1]],
        foreign=["msgbatch_00"],
        note="a note",
    )
    book.save(entry)
    read = BatchBook(tmp_path).entries[0]
    assert read.status == entry.status
    assert read.batch_id == "msgbatch_01"


def test_pending_and_tries_used(tmp_path: Path) -> None:
    book = BatchBook(tmp_path)
    collected_1 = intent_for(book, [1, 2, 3])
    collected_1.status = Status("b1", COLLECTED, again=[[2, 1], [3, 1]])
    book.save(collected_1)
    collected_2 = intent_for(book, [2, 3], [2, 2])
    collected_2.status = Status("b2", COLLECTED, again=[[3, 2]])  # the later batch wins
    book.save(collected_2)
    running = intent_for(book, [4, 5])
    running.status = Status("b3", IN_PROGRESS)
    book.save(running)
    ended = intent_for(book, [6])
    ended.status = Status("b4", ENDED, again=[[6, 9]])  # not yet collected: not counted
    book.save(ended)
    abandoned = intent_for(book, [7])
    abandoned.status = Status(None, ABANDONED, note="refused", foreign=["b_other"])
    book.save(abandoned)
    unconfirmed = intent_for(book, [8])

    for view in (book, BatchBook(tmp_path)):
        assert [e.intent.number for e in view.pending()] == [3, 4, 6]
        assert view.pending_rows() == [4, 5, 6, 8]
        assert view.pending_worst() == Decimal("0.375")
        assert view.tries_used() == {2: 1, 3: 2}
        assert view.claimed_ids() == {"b1", "b2", "b3", "b4", "b_other"}
    assert unconfirmed.status is None


def test_claimed_ids_include_ids_found_not_ours(tmp_path: Path) -> None:
    book = BatchBook(tmp_path)
    entry = intent_for(book, [1])
    entry.status = Status(None, "unconfirmed", foreign=["msgbatch_a", "msgbatch_b"])
    book.save(entry)
    assert BatchBook(tmp_path).claimed_ids() == {"msgbatch_a", "msgbatch_b"}


def test_an_empty_output_has_an_empty_book(tmp_path: Path) -> None:
    book = BatchBook(tmp_path)
    assert (book.entries, book.pending(), book.tries_used(), book.claimed_ids()) == (
        [],
        [],
        {},
        set(),
    )


@pytest.mark.parametrize("which", ["intent", "status"])
@pytest.mark.parametrize(
    "content",
    [b"", b'{"number": 1, ', b"[1, 2]", b"null", b"\xff\xfe"],
    ids=["empty", "truncated", "list", "null", "binary"],
)
def test_an_unreadable_record_is_a_usage_error_naming_the_file(
    tmp_path: Path, which: str, content: bytes
) -> None:
    book = BatchBook(tmp_path)
    entry = intent_for(book, [1])
    entry.status = Status("msgbatch_1", IN_PROGRESS)
    book.save(entry)
    name = "batch-000001.intent.json" if which == "intent" else "batch-000001.json"
    (tmp_path / BATCHES_DIR / name).write_bytes(content)
    with pytest.raises(UsageError, match=re.escape(name)):
        BatchBook(tmp_path)


@pytest.mark.parametrize(
    ("name", "content"),
    [("batch-000001.json", b"{}"), ("batch-000001.intent.json", b'{"number": 1}')],
    ids=["status-without-fields", "intent-without-fields"],
)
def test_a_record_without_its_fields_is_a_usage_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes
) -> None:
    book = BatchBook(tmp_path)
    entry = intent_for(book, [1])
    entry.status = Status("msgbatch_1", IN_PROGRESS)
    book.save(entry)
    (tmp_path / BATCHES_DIR / name).write_bytes(content)
    with pytest.raises(UsageError, match=re.escape(name)):
        BatchBook(tmp_path)


# --- BatchApi over MockTransport -------------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that records every request it is given."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


def virtual_clock() -> tuple[Clock, FakeTime]:
    """Batch mode's clock in virtual time from now (an intent is stamped with the real
    time): every wait passes at once, and how long it was is in `slept`."""
    fake = FakeTime(start=time.time())
    return Clock(now=fake.clock, sleep=fake.sleep), fake


def make_api(handler: Handler, **options: Any) -> BatchApi:
    headers = {"x-api-key": SECRET, "anthropic-version": "2023-06-01"}
    return BatchApi(BASE, headers, secret=SECRET, transport=httpx.MockTransport(handler), **options)


async def closing(api: BatchApi, work: Any) -> Any:
    try:
        return await work
    finally:
        await api.aclose()


def batch_object(batch_id: str, created: float, requests: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "id": batch_id,
        "type": "message_batch",
        "processing_status": "in_progress",
        "request_counts": {
            "processing": requests,
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        },
        "created_at": iso(created),
        "expires_at": iso(created + 86_400),
        "ended_at": None,
        "results_url": None,
        **extra,
    }


def api_error(status: int, kind: str, text: str, **headers: str) -> httpx.Response:
    body = {"type": "error", "error": {"type": kind, "message": text}}
    return httpx.Response(status, json=body, headers=headers)


def test_created_since_pages_newest_first_until_a_batch_older_than_since() -> None:
    now = 1_800_000_000.0
    pages = {
        None: ([batch_object("b5", now - 10), batch_object("b4", now - 20)], True),
        "b4": ([batch_object("b3", now - 30), batch_object("b2", now - 40)], True),
        "b2": ([batch_object("b1", now - 1000), batch_object("b0", now - 2000)], True),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after_id")
        data, more = pages[after]
        return httpx.Response(
            200,
            json={
                "data": data,
                "has_more": more,
                "first_id": data[0]["id"],
                "last_id": data[-1]["id"],
            },
        )

    recorder = Recorder(handler)
    api = make_api(recorder)
    found = asyncio.run(closing(api, api.created_since(now - 100)))
    assert [b["id"] for b in found] == ["b5", "b4", "b3", "b2"]
    queries = [parse_qs(urlsplit(str(r.url)).query) for r in recorder.requests]
    assert queries == [
        {"limit": ["100"]},
        {"limit": ["100"], "after_id": ["b4"]},
        {"limit": ["100"], "after_id": ["b2"]},
    ]
    assert all(r.method == "GET" and r.url.path == BATCHES_PATH for r in recorder.requests)


def test_created_since_stops_when_the_list_has_no_more() -> None:
    now = 1_800_000_000.0
    recorder = Recorder(
        lambda r: httpx.Response(
            200,
            json={"data": [batch_object("b1", now)], "has_more": False, "last_id": "b1"},
        )
    )
    api = make_api(recorder)
    found = asyncio.run(closing(api, api.created_since(now - 100)))
    assert [b["id"] for b in found] == ["b1"] and len(recorder.requests) == 1


def test_create_over_a_dropped_connection_is_unconfirmed_and_not_sent_again() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection reset by peer", request=request)

    recorder = Recorder(handler)
    api = make_api(recorder)
    with pytest.raises(CreateUnconfirmed, match="no answer"):
        asyncio.run(closing(api, api.create(b'{"requests":[]}')))
    assert len(recorder.requests) == 1  # a lost create may have made the batch: list first


@pytest.mark.parametrize("status", [500, 502, 503, 529])
def test_create_answered_by_a_5xx_is_unconfirmed_and_not_sent_again(status: int) -> None:
    recorder = Recorder(lambda r: api_error(status, "api_error", "internal"))
    api = make_api(recorder)
    with pytest.raises(CreateUnconfirmed) as caught:
        asyncio.run(closing(api, api.create(b'{"requests":[]}')))
    assert caught.value.status == status
    assert len(recorder.requests) == 1


def test_create_after_a_429_is_retried_and_returns_the_batch() -> None:
    answers = [
        api_error(429, "rate_limit_error", "slow down", **{"retry-after-ms": "1"}),
        httpx.Response(200, json=batch_object("msgbatch_ok", 1_800_000_000.0, 2)),
    ]
    recorder = Recorder(lambda r: answers.pop(0))
    clock, fake = virtual_clock()
    api = make_api(recorder, clock=clock)
    batch = asyncio.run(closing(api, api.create(b'{"requests":[]}')))
    assert fake.slept == [0.001]  # it waited retry-after-ms, not its backoff
    assert batch["id"] == "msgbatch_ok"
    assert [r.method for r in recorder.requests] == ["POST", "POST"]
    assert recorder.requests[0].content == recorder.requests[1].content == b'{"requests":[]}'
    assert recorder.requests[0].headers["content-type"] == "application/json"


def test_create_refused_with_a_400_is_an_error_with_the_apis_type() -> None:
    recorder = Recorder(lambda r: api_error(400, "invalid_request_error", "requests: too many"))
    api = make_api(recorder)
    with pytest.raises(BatchApiError) as caught:
        asyncio.run(closing(api, api.create(b'{"requests":[]}')))
    assert not isinstance(caught.value, CreateUnconfirmed)
    assert caught.value.status == 400
    assert caught.value.error_type == "invalid_request_error"
    assert "requests: too many" in str(caught.value)
    assert len(recorder.requests) == 1


def results_api(
    body: Any, recorder_out: list[Recorder] | None = None, **options: Any
) -> tuple[BatchApi, Recorder]:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"{BATCHES_PATH}/msgbatch_1":
            other = "https://results.elsewhere.test/v1/messages/batches/msgbatch_1/results"
            ended = batch_object("msgbatch_1", 0, processing_status="ended", results_url=other)
            return httpx.Response(200, json=ended)
        if request.url.path == f"{BATCHES_PATH}/msgbatch_1/results":
            return httpx.Response(200, content=body() if callable(body) else body)
        return httpx.Response(404, json={"type": "error", "error": {"type": "not_found_error"}})

    recorder = Recorder(handler)
    return make_api(recorder, **options), recorder


async def all_lines(api: BatchApi, batch_id: str) -> list[bytes]:
    try:
        return [item async for item in api.results(batch_id)]
    finally:
        await api.aclose()


def test_results_come_from_the_base_url_host_whatever_results_url_names() -> None:
    api, recorder = results_api(b'{"a":1}\n{"b":2}\n')

    async def scenario() -> list[bytes]:
        batch = await api.get("msgbatch_1")
        assert "elsewhere" in batch["results_url"]
        return await all_lines(api, batch["id"])

    assert asyncio.run(scenario()) == [b'{"a":1}', b'{"b":2}']
    assert len(recorder.requests) == 2
    assert {r.url.host for r in recorder.requests} == {urlsplit(BASE).hostname}


def test_results_lines_split_across_chunks_are_whole() -> None:
    chunks = [b'{"custom_id":"r1', b'-x"}\n{"cus', b'tom_id":"r2-x"}\n\n', b'{"c":3', b"}"]

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    api, _ = results_api(stream)
    assert asyncio.run(all_lines(api, "msgbatch_1")) == [
        b'{"custom_id":"r1-x"}',
        b'{"custom_id":"r2-x"}',
        b'{"c":3}',  # the last line needs no newline
    ]


def test_results_scrub_the_key_from_every_line() -> None:
    api, _ = results_api(f'{{"text":"{SECRET}"}}\n'.encode())
    [only] = asyncio.run(all_lines(api, "msgbatch_1"))
    assert SECRET.encode() not in only and b"[key]" in only


def test_results_a_line_longer_than_max_line_bytes_becomes_an_errored_result() -> None:
    """Never held whole: its row is an error (as an online answer over the cap), and the
    lines after it are still collected, so the batch is not stuck for ever."""

    async def stream() -> AsyncIterator[bytes]:
        yield b'{"custom_id":"r1-0123456789ab","result":'
        for _ in range(10):
            yield b"x" * 40  # one line of 400 bytes
        yield b'\n{"custom_id":"r2-0123456789ab"}\n'

    api, _ = results_api(stream, max_line_bytes=100)
    lines = [orjson.loads(line) for line in asyncio.run(all_lines(api, "msgbatch_1"))]
    assert lines[0]["custom_id"] == "r1-0123456789ab"
    assert lines[0]["result"]["error"]["error"]["type"] == "answer_too_large"
    assert lines[1] == {"custom_id": "r2-0123456789ab"}


def test_results_a_long_line_ending_inside_a_chunk_is_capped_too() -> None:
    async def stream() -> AsyncIterator[bytes]:
        yield b"x" * 60
        yield b"x" * 60 + b"\n"

    api, _ = results_api(stream, max_line_bytes=100)
    (line,) = asyncio.run(all_lines(api, "msgbatch_1"))
    assert orjson.loads(line)["result"]["type"] == "answer_too_large"


def test_results_refused_is_an_error_with_the_status() -> None:
    recorder = Recorder(lambda r: api_error(404, "not_found_error", "no such batch"))
    api = make_api(recorder)
    with pytest.raises(BatchApiError) as caught:
        asyncio.run(all_lines(api, "msgbatch_gone"))
    assert caught.value.status == 404 and "no such batch" in str(caught.value)


def echo(status: int) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        key = request.headers["x-api-key"]
        escaped = key.replace("S", "\\u0053")
        body = (
            '{"type":"error","error":{"type":"' + key + '_error","message":"your key '
            + key + " is bad (" + escaped + ")\"}}"
        )  # fmt: skip
        return httpx.Response(status, content=body.encode(), headers={"x-echo": key})

    return handler


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
@pytest.mark.parametrize("call", ["create", "get", "cancel", "probe", "results"])
def test_the_key_never_appears_in_an_error_even_when_the_server_echoes_it(
    call: str, status: int
) -> None:
    api = make_api(echo(status))
    work: Callable[[], Coroutine[Any, Any, Any]] = {
        "create": lambda: closing(api, api.create(b'{"requests":[]}')),
        "get": lambda: closing(api, api.get("msgbatch_1")),
        "cancel": lambda: closing(api, api.cancel("msgbatch_1")),
        "probe": lambda: closing(api, api.probe()),
        "results": lambda: all_lines(api, "msgbatch_1"),
    }[call]
    with pytest.raises(BatchApiError) as caught:
        asyncio.run(work())
    assert caught.value.status == status
    assert "is bad" in str(caught.value)  # the API's message is there, without the key
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value.args)
    assert SECRET not in caught.value.error_type


@pytest.mark.parametrize("call", ["create", "get"])
def test_the_key_never_appears_in_a_no_answer_error(call: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError(f"illegal header line: b'x-echo: {SECRET}'")

    api = make_api(handler, max_retries=0)
    work = api.create(b"{}") if call == "create" else api.get("msgbatch_1")
    with pytest.raises(BatchApiError) as caught:
        asyncio.run(closing(api, work))
    assert "no answer" in str(caught.value) and SECRET not in str(caught.value)


def test_the_key_never_appears_in_a_results_download_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError(f"illegal header line: b'x-echo: {SECRET}'")

    api = make_api(handler)
    with pytest.raises(BatchApiError) as caught:
        asyncio.run(all_lines(api, "msgbatch_1"))
    assert SECRET not in str(caught.value)


# --- Pending, create_body, request_total, status_of -------------------------------------------


def pending_of(rows: list[int]) -> Pending:
    pending = Pending()
    for row in rows:
        params = orjson.dumps({"model": "m", "max_tokens": 5, "row": row})
        pending.add(row, 1 + row % 3, params, Decimal("0.01") * (row + 1))
    return pending


@pytest.mark.parametrize("count", [2, 3, 4, 7, 10])
def test_halves_keep_every_row_once_in_order(count: int) -> None:
    rows = [5 * i + 3 for i in range(count)]
    whole = pending_of(rows)
    first, second = whole.halves()
    assert first.rows and second.rows
    assert first.rows + second.rows == rows
    assert first.tries + second.tries == whole.tries
    assert first.params + second.params == whole.params
    assert first.worst() + second.worst() == whole.worst()
    assert abs(len(first.rows) - len(second.rows)) <= 1
    assert first.size < whole.size and second.size < whole.size


def test_create_body_is_the_apis_json_with_the_custom_ids() -> None:
    rows = [0, 7, 2**63 - 1]
    params = [orjson.dumps({"model": "m", "max_tokens": 5, "messages": [{"n": r}]}) for r in rows]
    body = orjson.loads(create_body(NONCE, rows, params))
    assert list(body) == ["requests"]
    assert [r["custom_id"] for r in body["requests"]] == [custom_id(r, NONCE) for r in rows]
    assert [r["params"]["messages"][0]["n"] for r in body["requests"]] == rows
    assert all(API_ID.match(r["custom_id"]) for r in body["requests"])


def test_pending_size_is_at_least_the_body_it_makes() -> None:
    rows = list(range(0, 5000, 7))
    pending = pending_of(rows)
    body = create_body("f" * 12, pending.rows, pending.params)
    assert pending.size >= len(body)  # cutting by size keeps the body under the limit


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ({"request_counts": {"processing": 3, "succeeded": 2, "errored": 1}}, 6),
        ({"request_counts": {"processing": 0, "succeeded": 0}}, 0),
        ({"request_counts": {"processing": 4, "odd": "x", "none": None}}, 4),
        ({"request_counts": None}, 0),
        ({"request_counts": [1, 2]}, 0),
        ({}, 0),
    ],
)
def test_request_total(batch: dict[str, Any], expected: int) -> None:
    assert request_total(batch) == expected


def test_status_of_a_batch_object() -> None:
    batch = batch_object("msgbatch_9", 1_800_000_000.0, 5, processing_status="ended")
    batch["request_counts"]["odd"] = "x"
    status = status_of(batch, adopted=True)
    assert (status.batch_id, status.state, status.adopted) == ("msgbatch_9", "ended", True)
    assert status.counts == {
        "processing": 5,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert status.created_at == iso(1_800_000_000.0)
    assert status.expires_at == iso(1_800_086_400.0)


# --- Creator: splitting on a 413 -------------------------------------------------------------


class FakeServer:
    """A Message Batches API in a dict: creates refused with 413 above `max_requests`."""

    def __init__(self, max_requests: int = 10**9, listed: list[dict[str, Any]] | None = None):
        self.max_requests = max_requests
        self.listed = listed or []
        self.created: list[list[str]] = []  # each made batch's custom_ids
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST" and request.url.path == BATCHES_PATH:
            ids = [r["custom_id"] for r in orjson.loads(request.content)["requests"]]
            if len(ids) > self.max_requests:
                return api_error(413, "request_too_large", "Request exceeds the maximum size")
            self.created.append(ids)
            return httpx.Response(
                200, json=batch_object(f"msgbatch_{len(self.created)}", time.time(), len(ids))
            )
        if request.method == "GET" and request.url.path == BATCHES_PATH:
            return httpx.Response(200, json={"data": self.listed, "has_more": False})
        return api_error(404, "not_found_error", "no such route")


def make_creator(server: FakeServer, out_dir: Path) -> tuple[Creator, BatchBook, list[str]]:
    """A Creator in virtual time (a lost create's listing waits pass at once)."""
    notes: list[str] = []
    book = BatchBook(out_dir)
    creator = Creator(make_api(server, clock=virtual_clock()[0]), book, INTENT_API, notes.append)
    return creator, book, notes


def test_create_on_a_413_splits_into_two_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(submit.MAX_BYTES_ENV, raising=False)
    server = FakeServer(max_requests=3)
    creator, book, _ = make_creator(server, tmp_path)
    pending = pending_of([10, 11, 12, 13, 14, 15])
    made = asyncio.run(closing(creator.api, creator.create(pending)))

    assert [e.intent.rows for e in made] == [[10, 11, 12], [13, 14, 15]]
    assert all(e.status is not None and e.status.state == IN_PROGRESS for e in made)
    assert [e.batch_id for e in made] == ["msgbatch_1", "msgbatch_2"]
    assert server.created == [
        [custom_id(r, made[0].intent.nonce) for r in (10, 11, 12)],
        [custom_id(r, made[1].intent.nonce) for r in (13, 14, 15)],
    ]
    assert creator.max_bytes == pending.size // 2 < submit.MAX_BATCH_BYTES
    assert creator.requests == 6

    on_disk = BatchBook(tmp_path).entries
    assert [e.intent.number for e in on_disk] == [1, 2, 3]
    first = on_disk[0]
    assert first.status is not None and first.status.state == ABANDONED
    assert first.status.batch_id is None and "split" in (first.status.note or "")
    assert first.intent.rows == [10, 11, 12, 13, 14, 15]
    assert [e.batch_id for e in on_disk[1:]] == ["msgbatch_1", "msgbatch_2"]
    assert [e.intent.tries for e in on_disk[1:]] == [pending.tries[:3], pending.tries[3:]]
    assert BatchBook(tmp_path).pending_rows() == [10, 11, 12, 13, 14, 15]  # each row once
    assert book.pending_rows() == [10, 11, 12, 13, 14, 15]


def test_create_splits_again_until_every_part_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(submit.MAX_BYTES_ENV, raising=False)
    server = FakeServer(max_requests=2)
    creator, _, _ = make_creator(server, tmp_path)
    made = asyncio.run(closing(creator.api, creator.create(pending_of(list(range(8))))))
    assert [e.intent.rows for e in made] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert sorted(r for ids in server.created for r in ids) == sorted(
        custom_id(r, e.intent.nonce) for e in made for r in e.intent.rows
    )
    assert BatchBook(tmp_path).pending_rows() == list(range(8))


def test_create_refused_with_a_400_abandons_the_intent_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(submit.MAX_BYTES_ENV, raising=False)

    def handler(request: httpx.Request) -> httpx.Response:
        return api_error(400, "invalid_request_error", "params.model: unknown")

    notes: list[str] = []
    creator = Creator(make_api(handler), BatchBook(tmp_path), INTENT_API, notes.append)
    with pytest.raises(ApiRejectsEverything, match=re.escape("params.model: unknown")):
        asyncio.run(closing(creator.api, creator.create(pending_of([1, 2]))))
    [entry] = BatchBook(tmp_path).entries
    assert entry.status is not None and entry.status.state == ABANDONED
    assert BatchBook(tmp_path).pending_rows() == []  # nothing was made: the rows stay to do


def test_a_one_row_batch_refused_as_too_large_is_abandoned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(submit.MAX_BYTES_ENV, raising=False)
    server = FakeServer(max_requests=0)
    creator, _, _ = make_creator(server, tmp_path)
    with pytest.raises(ApiRejectsEverything):
        asyncio.run(closing(creator.api, creator.create(pending_of([42]))))
    [entry] = BatchBook(tmp_path).entries
    assert entry.status is not None and entry.status.state == ABANDONED


# --- Creator.adopt ---------------------------------------------------------------------------


@pytest.fixture
def no_size_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No batch size from the environment. (The listing waits pass in virtual time.)"""
    monkeypatch.delenv(submit.MAX_BYTES_ENV, raising=False)


def adopt(creator: Creator, entry: Entry) -> bool:
    adopted: bool = asyncio.run(closing(creator.api, creator.adopt(entry)))
    return adopted


@pytest.mark.usefixtures("no_size_from_env")
def test_adopt_takes_the_listed_batch_a_lost_create_made(tmp_path: Path) -> None:
    server = FakeServer()
    creator, book, notes = make_creator(server, tmp_path)
    entry = intent_for(book, [1, 2, 3])
    at = entry.intent.intent_at
    server.listed = [
        batch_object("msgbatch_new", at + 5, 3),
        batch_object("msgbatch_other_count", at + 2, 2),
    ]
    assert adopt(creator, entry) is True
    assert entry.status is not None and entry.status.adopted is True
    assert entry.batch_id == "msgbatch_new"
    [read] = BatchBook(tmp_path).entries
    assert read.status is not None and read.status.adopted is True
    assert read.batch_id == "msgbatch_new" and read.status.state == IN_PROGRESS
    assert server.created == []  # found, not created again
    assert any("msgbatch_new" in n for n in notes)


@pytest.mark.usefixtures("no_size_from_env")
def test_adopt_prefers_the_batch_created_nearest_the_intent(tmp_path: Path) -> None:
    server = FakeServer()
    creator, book, _ = make_creator(server, tmp_path)
    entry = intent_for(book, [1, 2])
    at = entry.intent.intent_at
    server.listed = [
        batch_object("msgbatch_late", at + 300, 2),
        batch_object("msgbatch_near", at + 1, 2),
    ]
    assert adopt(creator, entry) and entry.batch_id == "msgbatch_near"


@pytest.mark.usefixtures("no_size_from_env")
@pytest.mark.parametrize(
    "why",
    ["other-count", "claimed", "found-foreign-before", "older-than-intent", "empty-list"],
)
def test_adopt_leaves_batches_that_cannot_be_this_intents(tmp_path: Path, why: str) -> None:
    server = FakeServer()
    creator, book, _ = make_creator(server, tmp_path)
    if why == "claimed":
        other = intent_for(book, [7, 8, 9])
        other.status = Status("msgbatch_x", IN_PROGRESS)
        book.save(other)
    entry = intent_for(book, [1, 2, 3])
    at = entry.intent.intent_at
    if why == "found-foreign-before":
        entry.status = Status(None, "unconfirmed", foreign=["msgbatch_x"])
        book.save(entry)
    created = at - 3 * 3600 if why == "older-than-intent" else at + 5
    count = 4 if why == "other-count" else 3
    server.listed = [] if why == "empty-list" else [batch_object("msgbatch_x", created, count)]

    assert adopt(creator, entry) is False
    read = next(e for e in BatchBook(tmp_path).entries if e.intent.number == entry.intent.number)
    assert read.batch_id is None
    if why == "found-foreign-before":
        assert read.status is not None and read.status.foreign == ["msgbatch_x"]
    else:
        assert read.status is None
    assert server.created == []


def test_adopt_waits_until_a_slow_create_must_be_over_before_saying_not_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(submit.MAX_BYTES_ENV, raising=False)
    server = FakeServer()
    creator, book, _ = make_creator(server, tmp_path)
    entry = intent_for(book, [1])
    assert not adopt(creator, entry)  # never listed
    # it waited for the slow create to be over: listed at once, after 1 s and 3 s, and
    # when any create sent for the intent is over (timeout_s + margin after the intent)
    assert creator.api.clock.now() >= entry.intent.intent_at + creator.settle_s
    assert len(server.requests) == 4


def test_adopt_lists_again_after_each_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(submit.MAX_BYTES_ENV, raising=False)
    server = FakeServer()
    creator, book, _ = make_creator(server, tmp_path)
    entry = intent_for(book, [1])  # a create sent for it may still be made: list again
    listed = [[], [], [batch_object("msgbatch_late_listed", entry.intent.intent_at + 1, 1)]]

    def handler(request: httpx.Request) -> httpx.Response:
        server.requests.append(request)
        return httpx.Response(200, json={"data": listed.pop(0), "has_more": False})

    creator.api = make_api(handler, clock=creator.api.clock)
    assert adopt(creator, entry) and entry.batch_id == "msgbatch_late_listed"
    assert len(server.requests) == 3


@pytest.mark.usefixtures("no_size_from_env")
def test_send_after_a_lost_create_adopts_instead_of_creating_again(tmp_path: Path) -> None:
    """The whole protocol: the create's answer is lost, the batch it made is listed."""
    made: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            count = len(orjson.loads(request.content)["requests"])
            made.append(batch_object("msgbatch_made", time.time(), count))
            raise httpx.ReadError("connection dropped before the answer", request=request)
        return httpx.Response(200, json={"data": made, "has_more": False})

    book = BatchBook(tmp_path)
    notes: list[str] = []
    creator = Creator(make_api(handler, clock=virtual_clock()[0]), book, INTENT_API, notes.append)
    [entry] = asyncio.run(closing(creator.api, creator.create(pending_of([1, 2]))))
    assert len(made) == 1  # created once, never again
    assert entry.batch_id == "msgbatch_made"
    assert entry.status is not None and entry.status.adopted
    assert BatchBook(tmp_path).entries[0].batch_id == "msgbatch_made"


def test_a_write_stop_names_the_path_even_without_an_os_error(tmp_path: Path) -> None:
    journal = tmp_path / "out" / "journal-000001.jsonl"
    assert str(journal) in str(write_stop(None, journal))


# --- the judges of the one retry loop ----------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "creating", "again"),
    [
        (None, False, True),  # no answer: asked again
        (None, True, False),  # a create without an answer may exist: listed, not resent
        (200, False, False),
        (200, True, False),
        (404, False, False),
        (408, False, True),
        (408, True, False),  # may have made the batch
        (409, True, False),
        (429, False, True),
        (429, True, True),  # a create refused for pacing made nothing: sent again
        (500, False, True),
        (529, True, False),
        (413, True, False),  # too large: split by the creator, not resent
    ],
)
def test_judge_call(answer: int | None, creating: bool, again: bool) -> None:
    outcome: Any = (
        httpx.ConnectError("reset") if answer is None else (answer, {}, b"")
    )  # fmt: skip
    assert judge_call(outcome, creating=creating).again is again


def test_judge_call_hears_x_should_retry_and_keeps_the_headers_for_the_wait() -> None:
    verdict = judge_call((400, {"x-should-retry": "true", "retry-after": "4"}, b""), creating=False)
    assert verdict.again and verdict.headers["retry-after"] == "4"


@pytest.mark.parametrize(
    ("status", "again"),
    [(None, True), (429, True), (500, True), (529, True), (404, False), (410, False),
     (408, False), (409, False), (400, False), (401, False)],
)  # fmt: skip
def test_judge_download(status: int | None, again: bool) -> None:
    assert judge_download(BatchApiError("broken", status)).again is again
    assert judge_download(Collected()).again is False


# --- the batch run's budget ----------------------------------------------------------------------


def committed(budget: BatchBudget) -> Decimal:
    assert budget.local is not None
    return budget.local.spent + budget.local.reserved


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (what happens, then what is spent or reserved: the old sum spent + pending_worst
        # + maybe_spent, which the book still tells)
        ([("reserve", "0.30"), ("create", 1)], "0.30"),
        ([("reserve", "0.30"), ("create", 1), ("collected", "0.05")], "0.05"),
        ([("reserve", "0.30"), ("create", 1), ("lost", None)], "0.30"),
        ([("reserve", "0.30"), ("create", 1), ("create", 2)], "0.60"),  # once more
        ([("reserve", "0.30"), ("create", 1), ("create", 2), ("collected", "0.05")], "0.35"),
        ([("reserve", "0.30"), ("create", 1), ("abandoned", None)], "0"),  # nothing made
    ],
)
def test_a_batch_is_reserved_before_its_create_and_settled_when_collected_or_lost(
    tmp_path: Path, steps: list[tuple[str, Any]], expected: str
) -> None:
    book = BatchBook(tmp_path)
    budget = BatchBudget(Decimal(1), Decimal(0), book)

    async def walk() -> None:
        entry: Entry | None = None
        for what, value in steps:
            if what == "reserve":
                await budget.reserve_row(Decimal(value))
                entry = book.write_intent([1], [1], Decimal(value), **INTENT_API)
                budget.hold(entry)
                continue
            assert entry is not None
            if what == "create":
                await budget.before_create(entry, value)
                entry.status = Status(None, "unconfirmed", creates=value)
            elif what == "collected":
                budget.spend(Decimal(value))  # its rows, as recorded
                budget.released(entry)
            elif what == "abandoned":
                budget.released(entry)
            else:
                budget.lost(entry)

    asyncio.run(walk())
    assert committed(budget) == Decimal(expected)


def test_a_run_starts_from_what_the_book_says(tmp_path: Path) -> None:
    book = BatchBook(tmp_path)
    pending = intent_for(book, [1, 2])  # 0.125, not collected
    pending.status = Status("msgbatch_a", IN_PROGRESS, creates=3)  # two creates beyond
    book.save(pending)
    lost = intent_for(book, [3])
    lost.status = Status("msgbatch_b", "lost", creates=1)
    book.save(lost)
    budget = BatchBudget(Decimal(10), Decimal("0.5"), BatchBook(tmp_path))
    old_sum = Decimal("0.5") + book.pending_worst() + book.maybe_spent()
    assert committed(budget) == old_sum == Decimal("0.5") + Decimal("0.125") * 4


@pytest.mark.parametrize(
    ("spent", "row", "creates", "refused"),
    [
        ("0.70", "0.25", 1, False),  # 0.70 + 0.25 fits
        ("0.80", "0.25", None, True),  # the row does not fit: refused at once, never waited
        ("0.70", "0.25", 2, True),  # a second create counts the batch once more: 1.20
        ("0.40", "0.25", 2, False),  # 0.40 + 0.25 + 0.25
    ],
)
def test_a_batch_run_is_refused_at_once_with_batches_counted_in_the_text(
    tmp_path: Path, spent: str, row: str, creates: int | None, refused: bool
) -> None:
    book = BatchBook(tmp_path)
    budget = BatchBudget(Decimal(1), Decimal(spent), book)

    async def walk() -> None:
        await budget.reserve_row(Decimal(row))
        entry = book.write_intent([1], [1], Decimal(row), **INTENT_API)
        budget.hold(entry)
        for number in range(1, (creates or 0) + 1):
            await budget.before_create(entry, number)

    if not refused:
        asyncio.run(walk())
        return
    with pytest.raises(BudgetReached, match=r"spent or in batches \(at their worst case\)"):
        asyncio.run(walk())
