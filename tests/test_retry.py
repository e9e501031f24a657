"""Retry policy: which answers are sent again, and how long to wait first; and the one
loop that applies it.

Table-driven, in the style of anthropic-sdk-python's retry tests. All pure functions: no
sleeping, `now` is passed in (the loop's pauses are recorded, never slept).
"""

from __future__ import annotations

import asyncio
import os
import time
from email.utils import parsedate_to_datetime

import pytest

from pipeline.send.retry import (
    MAX_BACKOFF_S,
    Verdict,
    counts_toward_retries,
    is_redirect,
    is_transient_failure,
    retry_after_s,
    retry_delay,
    retrying,
    should_retry,
    transience,
)

# --- should_retry --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, True),  # no answer at all: timeout / dropped connection
        (200, False),
        (400, False),  # invalid_request_error: the same body fails the same way
        (401, False),  # authentication_error
        (402, False),  # billing_error
        (403, False),  # permission_error
        (404, False),  # not_found_error
        (408, True),  # request timeout
        (409, True),  # conflict
        (413, False),  # request_too_large
        (422, False),  # the gateway's business-rule violations (max_tokens_exceeded...)
        (429, True),  # rate_limit_error
        (500, True),  # api_error
        (502, True),
        (503, True),
        (504, True),  # timeout_error
        (529, True),  # overloaded_error
        (599, True),  # every 5xx
    ],
)
def test_should_retry_by_status(status: int | None, expected: bool) -> None:
    assert should_retry(status, {}) is expected


@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308, 399])
@pytest.mark.parametrize("header", [None, "true", "false"])
def test_a_redirect_is_never_retried(status: int, header: str | None) -> None:
    # not followed (the key would go with it) and not sent again: the same request would
    # only be redirected again, whatever x-should-retry says
    headers = {"x-should-retry": header} if header else {}
    assert is_redirect(status) and should_retry(status, headers) is False


@pytest.mark.parametrize("status", [None, 200, 299, 400, 429, 500])
def test_only_3xx_is_a_redirect(status: int | None) -> None:
    assert not is_redirect(status)


@pytest.mark.parametrize(
    ("status", "header", "expected"),
    [
        # x-should-retry: true forces a retry of what would not be retried...
        (400, "true", True),
        (401, "true", True),
        (404, "true", True),
        (422, "true", True),
        # ...and x-should-retry: false forbids a retry of what would be.
        (None, "false", False),
        (408, "false", False),
        (409, "false", False),
        (429, "false", False),
        (500, "false", False),
        (529, "false", False),
        # Agreeing with the status changes nothing.
        (429, "true", True),
        (400, "false", False),
        # Any other value is no verdict: the status decides.
        (400, "maybe", False),
        (529, "", True),
    ],
)
def test_x_should_retry_overrides_status(status: int | None, header: str, expected: bool) -> None:
    assert should_retry(status, {"x-should-retry": header}) is expected


# --- retry_after_s -------------------------------------------------------------------

DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
DATE_TS = parsedate_to_datetime(DATE).timestamp()


@pytest.mark.parametrize(
    ("headers", "now", "expected"),
    [
        ({}, 0.0, None),
        ({"retry-after-ms": "1500"}, 0.0, 1.5),
        ({"retry-after-ms": "250.5"}, 0.0, 0.2505),
        ({"retry-after-ms": "0"}, 0.0, 0.0),
        ({"retry-after": "3"}, 0.0, 3.0),
        ({"retry-after": "2.5"}, 0.0, 2.5),
        ({"retry-after": "0"}, 0.0, 0.0),
        ({"retry-after": "-4"}, 0.0, -4.0),
        # retry-after-ms wins over retry-after
        ({"retry-after-ms": "100", "retry-after": "5"}, 0.0, 0.1),
        # unreadable retry-after-ms: fall back to retry-after
        ({"retry-after-ms": "soon", "retry-after": "5"}, 0.0, 5.0),
        # HTTP-date: seconds from `now` to that date (negative when past)
        ({"retry-after": DATE}, DATE_TS - 30, 30.0),
        ({"retry-after": DATE}, DATE_TS + 10, -10.0),
        # garbage gives no wait at all, never an exception
        ({"retry-after": "soon"}, 0.0, None),
        ({"retry-after": ""}, 0.0, None),
        ({"retry-after-ms": "soon"}, 0.0, None),
    ],
)
def test_retry_after_s(headers: dict[str, str], now: float, expected: float | None) -> None:
    got = retry_after_s(headers, now)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.fixture
def new_york_tz():
    """A local time zone five hours off UTC, so local-vs-GMT mix-ups show."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "EST+5"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.mark.parametrize(
    "http_date",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sun Nov  6 08:49:37 1994",  # asctime: no zone written, but GMT by RFC 9110 5.6.7
    ],
)
def test_retry_after_http_date_is_gmt_whatever_the_local_zone(new_york_tz, http_date) -> None:
    # RFC 9110: every HTTP-date is GMT and a recipient MUST accept all three formats.
    gmt = parsedate_to_datetime("Sun, 06 Nov 1994 08:49:37 GMT").timestamp()
    assert retry_after_s({"retry-after": http_date}, gmt - 30) == pytest.approx(30.0)


# --- retry_delay ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retries_done", "expected"),
    [
        (0, 0.5),
        (1, 1.0),
        (2, 2.0),
        (3, 4.0),
        (4, 8.0),
        (5, 16.0),
        (6, 30.0),  # 32 capped
        (7, 30.0),
        (20, 30.0),
    ],
)
def test_backoff_doubles_from_half_a_second_and_caps(retries_done: int, expected: float) -> None:
    assert retry_delay(retries_done, {}, now=0.0, jitter=0.0) == expected


def test_backoff_does_not_overflow_on_a_very_long_retry_series() -> None:
    # max_retries has no upper bound in the job file: an overnight job riding out an
    # outage must keep waiting 30 s, not crash with OverflowError on retry 1,025.
    assert retry_delay(1100, {}, now=0.0, jitter=0.0) == MAX_BACKOFF_S


@pytest.mark.parametrize(
    ("retries_done", "jitter", "low", "high"),
    [
        (0, 0.0, 0.5, 0.5),  # no jitter: the full backoff
        (3, 0.0, 4.0, 4.0),
        (0, 0.5, 0.4375, 0.4375),  # 12.5% off
        (0, 0.999, 0.375, 0.3755),  # ~25% off, never more
        (3, 0.999, 3.0, 3.004),
        (9, 0.999, 22.5, 22.53),  # jitter applies to the capped value too
    ],
)
def test_jitter_shortens_backoff_by_at_most_a_quarter(
    retries_done: int, jitter: float, low: float, high: float
) -> None:
    assert low <= retry_delay(retries_done, {}, now=0.0, jitter=jitter) <= high


SERVER, BACKOFF = "server", "backoff"


@pytest.mark.parametrize(
    ("headers", "now", "retries_done", "source", "expected"),
    [
        # The server's wait is obeyed when 0 < value <= 300 s, whatever the retry count,
        # and exactly: no jitter.
        ({"retry-after": "2"}, 0.0, 0, SERVER, 2.0),
        ({"retry-after": "2"}, 0.0, 6, SERVER, 2.0),
        ({"retry-after": "0.25"}, 0.0, 3, SERVER, 0.25),
        ({"retry-after": "45"}, 0.0, 0, SERVER, 45.0),  # longer than the backoff: obeyed
        ({"retry-after": "300"}, 0.0, 0, SERVER, 300.0),
        ({"retry-after-ms": "1"}, 0.0, 0, SERVER, 0.001),
        ({"retry-after-ms": "1500"}, 0.0, 2, SERVER, 1.5),
        ({"retry-after-ms": "300000"}, 0.0, 0, SERVER, 300.0),
        ({"retry-after-ms": "750", "retry-after": "9"}, 0.0, 0, SERVER, 0.75),
        ({"retry-after": DATE}, DATE_TS - 12, 0, SERVER, 12.0),
        # Otherwise the backoff for this retry count (jitter may shorten it by <= 25%).
        ({"retry-after": "0"}, 0.0, 0, BACKOFF, 0.5),
        ({"retry-after": "-3"}, 0.0, 1, BACKOFF, 1.0),
        ({"retry-after": "300.5"}, 0.0, 2, BACKOFF, 2.0),
        ({"retry-after": "3600"}, 0.0, 3, BACKOFF, 4.0),
        ({"retry-after-ms": "0"}, 0.0, 0, BACKOFF, 0.5),
        ({"retry-after-ms": "-100"}, 0.0, 0, BACKOFF, 0.5),
        ({"retry-after-ms": "300001"}, 0.0, 1, BACKOFF, 1.0),
        ({"retry-after": "nan"}, 0.0, 0, BACKOFF, 0.5),
        ({"retry-after": "inf"}, 0.0, 0, BACKOFF, 0.5),
        ({"retry-after": "soon"}, 0.0, 4, BACKOFF, 8.0),
        ({"retry-after": DATE}, DATE_TS + 5, 1, BACKOFF, 1.0),  # a date already past
        ({"retry-after": DATE}, DATE_TS - 301, 1, BACKOFF, 1.0),  # a date too far ahead
        ({}, 0.0, 5, BACKOFF, 16.0),
    ],
)
@pytest.mark.parametrize("jitter", [0.0, 0.999])
def test_retry_delay_honours_retry_after_within_bounds(
    headers: dict[str, str],
    now: float,
    retries_done: int,
    source: str,
    expected: float,
    jitter: float,
) -> None:
    got = retry_delay(retries_done, headers, now=now, jitter=jitter)
    if source == SERVER or jitter == 0.0:
        assert got == pytest.approx(expected)
    else:
        assert expected * 0.75 <= got < expected * 0.751


@pytest.mark.parametrize(
    ("status", "headers", "error_type", "expected"),
    [
        (200, {}, "malformed_answer", True),  # a proxy's page, a corrupted stream
        (200, {"x-should-retry": "false"}, "malformed_answer", True),  # the body is at fault
        (302, {}, "malformed_answer", False),  # a redirect stays unfollowed
        (400, {}, "invalid_request_error", False),
        (None, {}, "connection_error", True),
    ],
)
def test_should_retry_by_error_type(status, headers, error_type, expected) -> None:
    assert should_retry(status, headers, error_type) is expected


# --- the one table of transient answers ------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retried", "outage", "maybe_made", "downloaded_again"),
    [
        (None, True, True, True, True),  # no answer: timeout, dropped connection
        (200, False, False, False, False),
        (302, False, False, False, False),  # a redirect: never followed
        (400, False, False, False, False),
        (401, False, False, False, False),
        (404, False, False, False, False),  # a batch gone: lost, not retried
        (408, True, False, True, False),  # a create that timed out may exist
        (409, True, False, True, False),
        (413, False, False, False, False),  # a batch too large: split, not retried
        (429, True, False, False, True),  # pacing: no create was made
        (500, True, True, True, True),
        (503, True, True, True, True),
        (529, True, True, True, True),  # overloaded
    ],
)
def test_one_table_says_what_each_answer_means_to_every_rule(
    status: int | None, retried: bool, outage: bool, maybe_made: bool, downloaded_again: bool
) -> None:
    row = transience(status)
    assert (row.retried, row.outage, row.maybe_made, row.downloaded_again) == (
        retried, outage, maybe_made, downloaded_again,
    )  # fmt: skip
    assert should_retry(status, {}) is retried
    assert is_transient_failure(status) is outage


@pytest.mark.parametrize(
    ("status", "outage", "counts"),
    [
        (429, False, False),  # pacing
        (429, True, False),
        (500, False, True),
        (500, True, False),  # the outage's failure, not the row's
        (None, True, False),
        (None, False, True),
        (400, True, True),  # a refusal is the row's, outage or not
    ],
)
def test_what_uses_up_a_rows_retries(status: int | None, outage: bool, counts: bool) -> None:
    assert counts_toward_retries(status, outage=outage) is counts


# --- retrying: the one loop --------------------------------------------------------------------

AGAIN, UNCOUNTED, DONE = Verdict(True), Verdict(True, counts=False), Verdict(False)


@pytest.mark.parametrize(
    ("verdicts", "max_retries", "max_attempts", "attempts", "capped", "pauses"),
    [
        ([DONE], 3, None, 1, False, []),
        ([AGAIN, AGAIN, DONE], 3, None, 3, False, [0.5, 1.0]),
        ([AGAIN] * 10, 2, None, 3, False, [0.5, 1.0]),  # the third failure is past max_retries
        ([AGAIN] * 10, 0, None, 1, False, []),
        # attempts that do not count use no retry and do not lengthen the backoff
        ([UNCOUNTED, UNCOUNTED, AGAIN, DONE], 1, None, 4, False, [0.5, 0.5, 0.5]),
        ([UNCOUNTED, AGAIN, AGAIN, AGAIN], 1, None, 3, False, [0.5, 0.5]),
        # ...but max_attempts bounds them (a request the server never admits)
        ([UNCOUNTED] * 10, 1, 4, 4, True, [0.5, 0.5, 0.5]),
        ([AGAIN, DONE], 5, 2, 2, False, [0.5]),  # the judge's word comes first
        # the server's retry-after, when it gives one
        ([Verdict(True, {"retry-after": "7"}), DONE], 3, None, 2, False, [7.0]),
    ],
)
def test_retrying_attempts_until_the_judge_or_the_bounds_say_stop(
    verdicts: list[Verdict],
    max_retries: int,
    max_attempts: int | None,
    attempts: int,
    capped: bool,
    pauses: list[float],
) -> None:
    outcomes = iter(range(len(verdicts)))
    paused: list[tuple[float, int]] = []

    async def attempt() -> int:
        return next(outcomes)

    async def pause(seconds: float, outcome: int) -> None:
        paused.append((seconds, outcome))

    looping = retrying(
        attempt, lambda n: verdicts[n], max_retries=max_retries, max_attempts=max_attempts,
        pause=pause, now=lambda: 0.0, jitter=lambda: 0.0,
    )  # fmt: skip
    tried = asyncio.run(looping)
    assert (tried.attempts, tried.capped, tried.outcome) == (attempts, capped, attempts - 1)
    assert paused == [(seconds, n) for n, seconds in enumerate(pauses)]  # after outcome n
