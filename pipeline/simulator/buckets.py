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
            _describe(headers, name, bucket, wall)
        token_buckets = [
            self.buckets[n] for n in ("input-tokens", "output-tokens") if n in self.buckets
        ]
        if token_buckets:  # "tokens" is the tightest of the token limits
            tightest = min(token_buckets, key=lambda b: b.level() / b.capacity)
            _describe(headers, "tokens", tightest, wall)
        return headers


def _describe(headers: dict[str, str], name: str, bucket: TokenBucket, wall: float) -> None:
    prefix = f"anthropic-ratelimit-{name}-"
    level = bucket.level()
    until_full = max(0.0, (bucket.capacity - level) / bucket.per_second)
    headers[prefix + "limit"] = str(round(bucket.per_minute))
    headers[prefix + "remaining"] = str(max(0, math.floor(level)))
    headers[prefix + "reset"] = rfc3339(wall + until_full)


def rfc3339(unix_time: float) -> str:
    """UTC time to the second; the time a bucket is full, rounded up to a whole second."""
    return _rfc3339_second(math.ceil(unix_time))


@functools.lru_cache(maxsize=256)  # most answers within a second share their reset times
def _rfc3339_second(unix_second: int) -> str:
    return datetime.fromtimestamp(unix_second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def retry_after_header(wait_s: float) -> str:
    """Whole seconds until a request would fit: rounded up, at least 1."""
    return str(max(1, math.ceil(wait_s)))
