"""Retry policy as small pure functions (`should_retry`, `retry_delay`, one table of which
answers are transient), and `retrying`, the one loop that applies them: online requests
(send/client.py), the Message Batches calls and the batch results download (batch/) all
retry through it.

The reference is the official SDK: `x-should-retry` decides first; otherwise 408, 409,
429 and every 5xx (so 529 overloaded) are retried, as are answers that never came
(timeouts, dropped connections). The server's `retry-after-ms` / `retry-after` is honoured
when it is positive and at most MAX_RETRY_AFTER_S; else capped exponential backoff with
jitter. Headers are given with lower-case names. `status is None` means no HTTP answer.
A redirect (3xx) is never retried, whatever `x-should-retry` says: it is not followed (the
key would go with it), and the same request would only be redirected again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Generic, TypeVar

from pipeline.send.ratelimit_headers import rate_limit_headers

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0  # above the SDK's 8 s: an overnight job rides out longer overloads
MAX_RETRY_AFTER_S = 300.0  # a longer server wait is treated as noise, not obeyed
_Outcome = TypeVar("_Outcome")


@dataclass(frozen=True)
class Transience:
    """What an answer of one kind means to each rule that retries or waits."""

    retried: bool  # worth another attempt (unless x-should-retry says otherwise)
    outage: bool  # a sign of an outage when it persists (the client's OutageWatch)
    maybe_made: bool  # a batch create answered so may have made its batch: list, not resend
    downloaded_again: bool  # a batch's results download that ended so is tried again


# The one table of transient answers, by kind (`answer_kind`); status None: no HTTP answer.
#                                      retried outage maybe_made downloaded_again
TRANSIENCE: dict[str, Transience] = {
    "no answer": Transience(True, True, True, True),  # timeout, dropped connection
    "server error": Transience(True, True, True, True),  # every 5xx, 529 overloaded too
    "rate limited": Transience(True, False, False, True),  # 429: pacing, not failure
    "timeout or conflict": Transience(True, False, True, False),  # 408, 409
    "redirect": Transience(False, False, False, False),  # 3xx: never followed
    "final": Transience(False, False, False, False),  # 2xx, and every other 4xx
}


def answer_kind(status: int | None) -> str:
    """The row of TRANSIENCE that `status` falls in."""
    if status is None:
        return "no answer"
    if status >= 500:
        return "server error"
    if status == 429:
        return "rate limited"
    if status in (408, 409):
        return "timeout or conflict"
    if is_redirect(status):
        return "redirect"
    return "final"


def transience(status: int | None) -> Transience:
    return TRANSIENCE[answer_kind(status)]


def is_redirect(status: int | None) -> bool:
    return status is not None and 300 <= status < 400


def should_retry(
    status: int | None, headers: Mapping[str, str], error_type: str | None = None
) -> bool:
    """Whether an answer (or the lack of one, `status is None`) is worth another attempt.

    A malformed answer (a 2xx that is not an answer of its format: a proxy's page, a
    corrupted stream, an answer over the size cap) is worth one: the next may be whole."""
    if is_redirect(status):
        return False
    if error_type == "malformed_answer":
        return True
    verdict = headers.get("x-should-retry")
    if verdict == "true":
        return True
    if verdict == "false":
        return False
    return transience(status).retried


def retry_after_s(headers: Mapping[str, str], now: float) -> float | None:
    """The server's requested wait in seconds, or None when it gave none we can read.

    `now` is the UNIX time, for `retry-after` given as an HTTP date.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return float(millis) / 1000.0
        except ValueError:
            pass
    after = headers.get("retry-after")
    if after is None:
        return None
    try:
        return float(after)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(after)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # every HTTP-date is GMT (RFC 9110), zone written or not
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - now


def retry_delay(
    retries_done: int, headers: Mapping[str, str], *, now: float, jitter: float
) -> float:
    """Seconds to wait before retry number `retries_done + 1`.

    `jitter` is a random number in [0, 1): it shortens the backoff by up to 25% so that
    workers that failed together do not come back together.
    """
    after = retry_after_s(headers, now)
    if after is not None and 0 < after <= MAX_RETRY_AFTER_S:
        return after
    doublings = min(retries_done, 32)  # the cap is reached long before; 2.0**1100 overflows
    backoff = min(INITIAL_BACKOFF_S * 2.0**doublings, MAX_BACKOFF_S)
    return backoff * (1.0 - 0.25 * jitter)


BUCKET_REMAINING = (  # a 429 with one of these at 0 is explained: that bucket is empty
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-output-tokens-remaining",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
)


def explained_429(headers: Mapping[str, str], message: str | None) -> bool:
    """Whether a 429 says a rate bucket is empty (pace the rate) rather than that too many
    requests are in flight (a gateway's concurrency cap, which says no bucket is empty)."""
    if "concurren" in (message or "").lower():
        return False
    headers = rate_limit_headers(headers)  # a gateway's renamed copies count too
    for name in BUCKET_REMAINING:
        try:
            if float(headers.get(name, "nan")) <= 0:
                return True
        except ValueError:
            continue
    return False


def is_transient_failure(status: int | None) -> bool:
    """No answer, or a server error (5xx, 529): a sign of an outage when they persist."""
    return transience(status).outage


def counts_toward_retries(status: int | None, *, outage: bool) -> bool:
    """A 429 is pacing, not failure; a transient failure while the API is down is the
    outage's, not the row's. Everything else uses up one of the row's max_retries."""
    if status == 429:
        return False
    return not (outage and is_transient_failure(status))


# -- the one retry loop ---------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """A judge's word on one attempt's outcome."""

    again: bool  # worth another attempt
    headers: Mapping[str, str] = field(default_factory=dict)  # the answer's: retry-after
    counts: bool = True  # uses up one of max_retries (429s, an outage's failures do not)


@dataclass(frozen=True)
class Tried(Generic[_Outcome]):
    """How `retrying` ended: the last attempt's outcome."""

    outcome: _Outcome
    attempts: int
    capped: bool = False  # still worth another, but max_attempts were made


async def just_sleep(seconds: float, _: object) -> None:
    """The pause of a caller that only waits."""
    await asyncio.sleep(seconds)


async def retrying(
    attempt: Callable[[], Awaitable[_Outcome]],
    judge: Callable[[_Outcome], Verdict],
    *,
    max_retries: int,
    max_attempts: int | None = None,
    pause: Callable[[float, _Outcome], Awaitable[None]] = just_sleep,
    now: Callable[[], float] = time.time,
    jitter: Callable[[], float] = random.random,
    first: _Outcome | None = None,
) -> Tried[_Outcome]:
    """Attempt until `judge` says no more, the attempts that count exceed `max_retries`,
    or `max_attempts` were made (429s count none, yet a request never admitted must end).

    `attempt` makes one attempt and returns its outcome (an error the caller maps to one
    is an outcome too); `judge` is pure. `pause(seconds, outcome)` is the wait before the
    attempt that follows `outcome` (the seam for fake time, and where a caller hears of
    the retry: a halt that ends it, a budget asked again); `now` is UNIX time, for a
    retry-after given as a date; `jitter` is in [0, 1). `first`: the first attempt's
    outcome, when the caller made it already (to see an answer without this loop).
    """
    attempts = failures = 0
    while True:
        attempts += 1
        outcome = first if attempts == 1 and first is not None else await attempt()
        verdict = judge(outcome)
        failures += verdict.counts
        if not verdict.again or failures > max_retries:
            return Tried(outcome, attempts)
        if max_attempts is not None and attempts >= max_attempts:
            return Tried(outcome, attempts, capped=True)
        retries_done = max(failures, 1) - 1
        await pause(retry_delay(retries_done, verdict.headers, now=now(), jitter=jitter()), outcome)
