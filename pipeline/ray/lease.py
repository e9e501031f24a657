"""One rate limit, one cooldown and one budget for many workers: capacity in leases.

`CapacityPool` (pool.py) holds the job's buckets (requests, input, output, combined tokens), the
cooldown any worker's 429 starts, the limits learned from the server, and the budget. On a
cluster one named Ray actor holds it; a worker's `LeasedLimiter` takes capacity from it in
chunks (a quarter second of the rate, not one remote call a request) and gives back what
it did not use. A lease is granted at once but may be usable only later: the pool's buckets
go into debt as a local bucket does (limits.py), and the grant says how long the worker must
wait, so every worker together sends at the told rate, in arrival order, with no polling.

The requests in flight are the cluster's too: the pool runs the adaptive concurrency
(send/pressure.py) on the cluster's total, and gives each worker its share of it. Workers
tell it what they saw (answers, and the levels that drew unexplained 429s, which the pool
puts in cluster terms) at most every SYNC_S, at once after a 429, so a gateway's cap on
requests in flight is learned once for all of them, not once per worker. Shares are of the
workers planned, from the first request (not of those joined so far, which would let the
first ones take the whole limit each), and a share is given only from what the others' last
shares leave free: the shares never add up to more than the cluster's limit, even while a
worker has not yet heard that it shrank; below one request a worker, a worker's share is 0.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from typing import Any, Protocol

from pipeline.ray.pool import LEASE_S, SYNC_S
from pipeline.ray.pool import CapacityPool as CapacityPool
from pipeline.ray.pool import Grant as Grant
from pipeline.ray.pool import InFlight as InFlight
from pipeline.ray.pool import LocalPool as LocalPool
from pipeline.ray.pool import Share as Share
from pipeline.send.limits import (
    KINDS,
    Clock,
    Gate,
    Limiter,
    Sleep,
    Ticket,
    attempt_amounts,
)


class ShareGate(Gate):
    """A worker's gate: its share of the cluster's requests in flight is its ceiling (its
    own step back up after 529s never passes it), and may be 0 for a while: the limit split
    among more workers than it has requests."""

    def set_share(self, share: int, *, keep_lower: bool) -> None:
        self.ceiling = share
        self.limit = min(self.limit, share) if keep_lower else share
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = max(min(1, self.ceiling), min(limit, self.ceiling))
        self._wake()


class Pool(Protocol):
    """The pool as a worker reaches it: in process (tests) or a Ray actor's handle."""

    async def lease(self, amounts: Mapping[str, float]) -> Grant: ...
    async def give_back(self, amounts: Mapping[str, float]) -> None: ...
    async def cool_down(self, seconds: float) -> float: ...
    async def lower(self, kind: str, per_minute: float) -> None: ...
    async def sync(self, worker: str, news: InFlight) -> Share: ...


class LeasedLimiter(Limiter):
    """A worker's limiter: the buckets and the concurrency control are the pool's, reached
    through leases and syncs; the gate is local and admits this worker's share. Call
    `join` before the first request and `release_unused` after the last."""

    def __init__(
        self,
        pool: Pool,
        limits: Mapping[str, float],
        *,
        workers: int,
        concurrency: int | None = None,  # the job's, for the whole cluster
        name: str = "",
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(concurrency=concurrency, clock=clock, sleep=sleep)
        self.concurrency = None  # the pool's control moves this worker's gate
        self.gate = ShareGate(concurrency) if concurrency else None
        self.pool, self.name = pool, name or f"worker-{id(self):x}"
        self.limits = {k: float(v) for k, v in limits.items() if v and k in KINDS}
        self.workers = workers
        self.chunk = {k: self._chunk(v) for k, v in self.limits.items()}
        self.held = dict.fromkeys(self.limits, 0.0)
        self.sent = 0  # attempts let through, for the driver's requests a minute
        self._answered, self._answered_level, self._refused = 0, 0, list[int]()
        self._synced_at, self._syncing, self._left = -math.inf, False, False
        self._asking = False  # a share of 0: a sync of its own is on its way
        self._leasing = asyncio.Lock()
        self._told: set[asyncio.Task[object]] = set()  # pool calls nobody waits for

    async def join(self) -> None:
        """Before the first request: this worker's share of the requests in flight."""
        await self._sync()

    def answered(self, ticket: Ticket) -> None:
        self._in_a_row = 0
        self._answered += 1
        self._answered_level = max(self._answered_level, ticket.level)
        self._sync_soon()

    def rate_limited(
        self, retry_after_s: float, ticket: Ticket | None = None, *, explained: bool = True
    ) -> None:
        if explained or ticket is None or self.gate is None:
            super().rate_limited(retry_after_s, ticket, explained=explained)
            return
        self._in_a_row += 1  # a cap on requests in flight: the pool's control hears of it
        self._refused.append(ticket.level)
        # until the pool answers, this worker's own level drew it: no more than under it
        self.gate.set_limit(min(self.gate.limit, ticket.level - 1))
        self._sync_soon(at_once=True)

    def _sync_soon(self, *, at_once: bool = False) -> None:
        if self._left or self._syncing:
            return
        if not at_once and self._clock() - self._synced_at < SYNC_S:
            return
        self._syncing = True
        self._tell(self._sync())

    async def _sync(self) -> None:
        news = InFlight(
            self.gate.active if self.gate else 0, self._answered, self._answered_level,
            tuple(self._refused),
        )  # fmt: skip
        self._answered, self._answered_level, self._refused = 0, 0, []
        self._syncing = True
        try:
            share = await self.pool.sync(self.name, news)
        finally:
            self._syncing, self._synced_at = False, self._clock()
        if isinstance(self.gate, ShareGate):
            if self._overload_lowered and self.gate.limit >= share.limit:
                self._overload_lowered = False  # quiet spells have stepped back up to it
            # 529s: this worker's own step down holds
            self.gate.set_share(share.limit, keep_lower=self._overload_lowered)
            if not share.limit and not self._left and not self._asking:
                self._asking = True  # nothing to send with: ask again soon
                self._tell(self._ask_again())
        if self._refused:  # 429s that came while this sync was on its way
            self._sync_soon(at_once=True)

    async def _ask_again(self) -> None:
        """A share of 0 brings no answers, hence no syncs: the worker asks on its own."""
        await self._sleep(SYNC_S)
        self._asking = False
        if not self._left and not self._syncing:
            await self._sync()

    async def _take(self, input_tokens: int, output_tokens: int) -> Ticket:
        amounts = attempt_amounts(input_tokens, output_tokens)
        wanted = {k: amounts[k] for k in self.held}
        while True:
            await self._cooled_down()
            self._recover()  # after 529s: quiet spells step the gate back up (Limiter's)
            short = {k: a for k, a in wanted.items() if self.held[k] < a}
            if not short:
                for kind, amount in wanted.items():
                    self.held[kind] -= amount
                self.sent += 1
                return Ticket(wanted)
            async with self._leasing:  # one lease at a time: the others use what it brings
                if any(self.held[k] < a for k, a in short.items()):
                    await self._lease({k: max(a, self.chunk[k]) for k, a in short.items()})

    async def _lease(self, amounts: dict[str, float]) -> None:
        grant = await self.pool.lease(amounts)
        if grant.resume_in_s > 0:
            super().cool_down(grant.resume_in_s)
        if grant.ready_in_s > 0:
            await self._sleep(grant.ready_in_s)
        for kind, amount in grant.amounts.items():
            self.held[kind] += amount

    def finish(
        self, ticket: Ticket, input_used: int | None = None, output_used: int | None = None
    ) -> None:
        """As Limiter.finish, with the correction kept as this worker's credit (or debt)."""
        if self.gate is not None:
            self.gate.release()
        used = {"requests": 1.0, "input_tokens": input_used or 0, "output_tokens": output_used or 0}
        used["tokens"] = used["input_tokens"] + used["output_tokens"]
        for kind in ("input_tokens", "output_tokens", "tokens"):
            if kind in self.held:
                self.held[kind] += ticket.amounts.get(kind, 0.0) - used[kind]

    def cool_down(self, seconds: float) -> None:
        super().cool_down(seconds)
        self._tell(self.pool.cool_down(seconds))  # every worker waits it out

    def _apply(self, kind: str) -> None:
        """A limit learned from the server (or lowered): the pool's, for every worker."""
        if kind not in self.held:
            self.held[kind] = 0.0
        self.chunk[kind] = self._chunk(self.limits[kind])
        self._tell(self.pool.lower(kind, self.limits[kind]))

    def _chunk(self, per_minute: float) -> float:
        """A lease: this worker's part of LEASE_S of the rate (at least one)."""
        return max(1.0, per_minute / 60.0 * LEASE_S / self.workers)

    def _tell(self, call: Any) -> None:
        task = asyncio.get_running_loop().create_task(call)
        self._told.add(task)
        task.add_done_callback(self._told.discard)

    async def release_unused(self, *, pausing: bool = False) -> None:
        """At the end: what this worker holds and did not send goes back to the pool.
        `pausing`: it will be back (process(): another batch), its place kept for it."""
        unused = {k: v for k, v in self.held.items() if v > 0}
        self.held = dict.fromkeys(self.held, 0.0)
        if unused:
            await self.pool.give_back(unused)
        self._left = True  # no sync after this one: it would register the worker again
        await asyncio.gather(*self._told, return_exceptions=True)
        gone = InFlight(leaving=not pausing, pausing=pausing)
        await self.pool.sync(self.name, gone)  # its share to the others


def job_limits(limits: Any) -> dict[str, float]:
    """A job's [limits] as the pool's buckets, by kind (only those it sets)."""
    by_kind = {
        "requests": limits.requests_per_minute,
        "input_tokens": limits.input_tokens_per_minute,
        "output_tokens": limits.output_tokens_per_minute,
        "tokens": limits.tokens_per_minute,
    }
    return {kind: float(value) for kind, value in by_kind.items() if value}
