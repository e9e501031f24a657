"""The server's rate limits: token buckets refilled continuously, like the real API's.

Three buckets (requests, input tokens, output tokens), each optional. A request is admitted
only if it fits all of them at once; output tokens are reserved at max_tokens when a request
starts and the unused part is given back when it ends.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

Clock = Callable[[], float]
TOKEN_BUCKETS = ("input-tokens", "output-tokens")


class TokenBucket:
    """A bucket of `per_minute` tokens a minute holding at most `burst_s` seconds' worth."""

    def __init__(self, per_minute: float, burst_s: float, clock: Clock = time.monotonic) -> None:
        self.per_minute = per_minute
        self.per_second = per_minute / 60.0
        self.capacity = max(1.0, per_minute * burst_s / 60.0)
        self._clock = clock
        self._level = self.capacity
        self._updated = clock()

    def level(self) -> float:
        """The tokens available now (negative after an oversized request)."""
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._updated) * self.per_second)
        self._updated = now
        return self._level

    def wait_s(self, cost: float) -> float:
        """Seconds until `cost` fits (0 if it fits now).

        A request bigger than the whole bucket fits when the bucket is full, then drives the
        level negative: the same as a capacity of at least the largest single request.
        """
        return max(0.0, (min(cost, self.capacity) - self.level()) / self.per_second)

    def take(self, cost: float) -> None:
        self._level = self.level() - cost

    def give_back(self, amount: float) -> None:
        self._level = min(self.capacity, self.level() + amount)

    def remaining(self) -> int:
        return max(0, math.floor(self.level()))

    def seconds_until_full(self) -> float:
        return max(0.0, (self.capacity - self.level()) / self.per_second)

    def reset(self) -> None:
        self._level = self.capacity
        self._updated = self._clock()


@dataclass(frozen=True, slots=True)
class Admission:
    """The result of asking the limiter: admitted, or how long to wait."""

    admitted: bool
    retry_after_s: float = 0.0


class RateLimiter:
    """The requests, input-token and output-token buckets of one server."""

    def __init__(
        self,
        rpm: float | None,
        itpm: float | None,
        otpm: float | None,
        burst_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self.buckets: dict[str, TokenBucket] = {
            name: TokenBucket(rate, burst_s, clock)
            for name, rate in (("requests", rpm), ("input-tokens", itpm), ("output-tokens", otpm))
            if rate is not None
        }

    def try_acquire(self, input_tokens: int, max_output_tokens: int) -> Admission:
        """Take one request, its input tokens and a max_tokens reservation, or nothing at all."""
        costs = {"requests": 1, "input-tokens": input_tokens, "output-tokens": max_output_tokens}
        waits = [bucket.wait_s(costs[name]) for name, bucket in self.buckets.items()]
        if any(wait > 0 for wait in waits):
            return Admission(False, max(waits))
        for name, bucket in self.buckets.items():
            bucket.take(costs[name])
        return Admission(True)

    def settle(self, reserved_output_tokens: int, actual_output_tokens: int) -> None:
        """Give back the part of the output reservation that was not used."""
        bucket = self.buckets.get("output-tokens")
        if bucket is not None and reserved_output_tokens > actual_output_tokens:
            bucket.give_back(reserved_output_tokens - actual_output_tokens)

    def reset(self) -> None:
        for bucket in self.buckets.values():
            bucket.reset()

    def headers(self, now: float | None = None) -> dict[str, str]:
        """anthropic-ratelimit-* headers for every configured bucket; `now` is UNIX time."""
        wall = time.time() if now is None else now
        headers: dict[str, str] = {}
        for name, bucket in self.buckets.items():
            level = bucket.level()
            _describe(headers, name, bucket.per_minute, level, bucket.seconds_until_full(), wall)
        combined = self.combined_tokens()
        if combined is not None:
            _describe(headers, "tokens", *combined, wall)
        return headers

    def openai_headers(self) -> dict[str, str]:
        """x-ratelimit-{limit,remaining,reset}-{requests,tokens}, as OpenAI sends them (reset
        is a duration such as "6m0s" or "20ms"; the tokens figures are `combined_tokens`)."""
        headers: dict[str, str] = {}
        requests = self.buckets.get("requests")
        if requests is not None:
            level, until_full = requests.level(), requests.seconds_until_full()
            _describe_openai(headers, "requests", requests.per_minute, level, until_full)
        combined = self.combined_tokens()
        if combined is not None:
            _describe_openai(headers, "tokens", *combined)
        return headers

    def combined_tokens(self) -> tuple[float, float, float] | None:
        """(limit, level, seconds until full) of the token limits taken together: the tightest
        limit, the least left in any token bucket, the time until all are full again.

        The limit never changes with the buckets' levels, so a client that learns from the
        tokens-* headers sees the same number on every answer.
        """
        token_buckets = [self.buckets[n] for n in TOKEN_BUCKETS if n in self.buckets]
        if not token_buckets:
            return None
        return (
            min(bucket.per_minute for bucket in token_buckets),
            min(bucket.level() for bucket in token_buckets),
            max(bucket.seconds_until_full() for bucket in token_buckets),
        )


def _describe(
    headers: dict[str, str],
    name: str,
    per_minute: float,
    level: float,
    until_full: float,
    wall: float,
) -> None:
    prefix = f"anthropic-ratelimit-{name}-"
    headers[prefix + "limit"] = str(round(per_minute))
    headers[prefix + "remaining"] = str(max(0, math.floor(level)))
    headers[prefix + "reset"] = rfc3339(wall + until_full)


def _describe_openai(
    headers: dict[str, str], name: str, per_minute: float, level: float, until_full: float
) -> None:
    headers[f"x-ratelimit-limit-{name}"] = str(round(per_minute))
    headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(level)))
    headers[f"x-ratelimit-reset-{name}"] = go_duration(until_full)


def go_duration(seconds: float) -> str:
    """A duration the way OpenAI's reset headers write it (Go style): "20ms", "1.5s", "6m0s"."""
    millis = max(0, round(seconds * 1000))
    if millis < 1000:
        return f"{millis}ms" if millis else "0s"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    head = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    return f"{head}{secs}s"


def rfc3339(unix_time: float) -> str:
    """UTC time to the second; the time a bucket is full, rounded up to a whole second."""
    return _rfc3339_second(math.ceil(unix_time))


@functools.lru_cache(maxsize=256)  # most answers within a second share their reset times
def _rfc3339_second(unix_second: int) -> str:
    return datetime.fromtimestamp(unix_second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def retry_after_header(wait_s: float) -> str:
    """Whole seconds until a request would fit: rounded up, at least 1."""
    return str(max(1, math.ceil(wait_s)))
