"""The simulator's prompt cache, with the rules of the real one (../shared/API-NOTES.md).

An entry is one breakpoint's prefix, keyed by model and content (`prefixes`). A request reads
the longest of its prefixes that is live and writes every longer one. What it writes becomes
readable only when its answer begins (`publish`): requests that arrive before that, e.g. a
parallel fan-out, each pay a write of their own. An entry lives for its TTL from its last
use: a read refreshes it, a write sets it. A prefix shorter than the model's minimum
cacheable length is never cached, and then both cache counters stay 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.simulator.protocol import CachePrefix, ParsedRequest, Usage

# The minimum cacheable prefix by model-id prefix (aliases and dated ids alike).
MIN_CACHEABLE_TOKENS: tuple[tuple[str, int], ...] = (
    ("claude-opus-4-5", 4096),
    ("claude-opus-4-6", 4096),
    ("claude-haiku-4-5", 4096),
    ("claude-opus-4-7", 2048),
    ("claude-3-haiku", 2048),
    ("claude-3-5-haiku", 2048),
)
DEFAULT_MIN_TOKENS = 1024  # Sonnet 4 / 4.5 / 4.6 / 3.7, Opus 4 / 4.1, and any other model
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
SWEEP_EVERY = 4096  # writes between sweeps of expired entries: memory follows what is live


def min_cacheable_tokens(model: str, override: int | None = None) -> int:
    """The fewest prefix tokens `model` caches (`override`, if given, for every model)."""
    if override is not None:
        return override
    known = (n for prefix, n in MIN_CACHEABLE_TOKENS if model.startswith(prefix))
    return next(known, DEFAULT_MIN_TOKENS)


@dataclass(frozen=True, slots=True)
class CachePlan:
    """What a request does to the cache: its usage, the prefix it reads, those it writes."""

    usage: Usage
    read: CachePrefix | None = None
    writes: tuple[CachePrefix, ...] = ()


class PromptCache:
    """Readable entries and when each expires, on the simulator's clock."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, min_tokens: int | None = None
    ) -> None:
        self._clock = clock
        self._min_tokens = min_tokens
        self._expiry: dict[bytes, float] = {}
        self._writes_since_sweep = 0

    def plan(self, request: ParsedRequest) -> CachePlan:
        """The request's cache usage as of its arrival, without changing the cache: a request
        the rate limiter then refuses must leave no trace (see `admit` and `publish`)."""
        minimum = min_cacheable_tokens(request.prompt.model, self._min_tokens)
        eligible = [p for p in request.cache_prefixes if p.tokens >= minimum]
        now = self._clock()
        hit = len(eligible) - 1
        while hit >= 0 and self._expiry.get(eligible[hit].key, float("-inf")) <= now:
            hit -= 1
        read = eligible[hit] if hit >= 0 else None
        writes = tuple(eligible[hit + 1 :])
        return CachePlan(_usage(request, read, writes), read, writes)

    def admit(self, plan: CachePlan) -> None:
        """The request is admitted: the entry it reads lives on from now."""
        if plan.read is not None:
            self._keep(plan.read, self._clock())

    def publish(self, plan: CachePlan) -> None:
        """The request's answer begins: what it wrote is readable from now on."""
        now = self._clock()
        for prefix in plan.writes:
            self._keep(prefix, now)
        self._writes_since_sweep += len(plan.writes)
        if self._writes_since_sweep >= SWEEP_EVERY:
            self._writes_since_sweep = 0
            self._expiry = {key: t for key, t in self._expiry.items() if t > now}

    def serve_now(self, request: ParsedRequest) -> Usage:
        """Plan, admit and publish at once: a request answered as soon as it is processed
        (a batch's), so the next one processed can read what it wrote."""
        plan = self.plan(request)
        self.admit(plan)
        self.publish(plan)
        return plan.usage

    def clear(self) -> None:
        self._expiry.clear()
        self._writes_since_sweep = 0

    def _keep(self, prefix: CachePrefix, now: float) -> None:
        # Never shortens a life: a 5m use of an entry someone wrote for 1h keeps the hour.
        until = now + TTL_SECONDS[prefix.ttl]
        self._expiry[prefix.key] = max(self._expiry.get(prefix.key, until), until)


def _usage(
    request: ParsedRequest, read: CachePrefix | None, writes: tuple[CachePrefix, ...]
) -> Usage:
    """Cached tokens are not input tokens. Each written stretch (from the end of the read,
    or of the previous write, to its breakpoint) is counted at its breakpoint's TTL."""
    end = read.tokens if read is not None else 0
    by_ttl = {"5m": 0, "1h": 0}
    for prefix in writes:
        by_ttl[prefix.ttl] += prefix.tokens - end
        end = prefix.tokens
    return Usage(
        request.input_tokens - end,
        cache_creation_input_tokens=by_ttl["5m"] + by_ttl["1h"],
        cache_read_input_tokens=read.tokens if read is not None else 0,
        cache_5m_tokens=by_ttl["5m"],
        cache_1h_tokens=by_ttl["1h"],
        service_tier=request.service_tier,
    )
