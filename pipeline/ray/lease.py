"""One rate limit, one cooldown and one budget for many workers: capacity in leases.

`CapacityPool` (pool.py) holds the job's buckets (requests, input, output, combined tokens), the
cooldown any worker's 429 starts, the limits learned from the server, and the budget. On a
cluster one named Ray actor holds it; a worker's `LeasedLimiter` is a Limiter
(send/limits.py) whose capacity source is `Leases`: capacity taken from the pool in chunks
(a quarter second of the rate, not one remote call a request), what it did not use given
back. A lease is granted at once but may be usable only later: the pool's buckets go into
debt as a local bucket does (send/buckets.py), and the grant says how long the worker must
wait, so every worker together sends at the told rate, in arrival order, with no polling.

The requests in flight are the cluster's too: the pool runs the adaptive concurrency
(send/pressure.py's PressureControl) on the cluster's total, and gives each worker its
share of it, which the worker's own PressureControl makes its gate's ceiling. Workers tell
it what they saw (answers, and the levels that drew unexplained 429s, which the pool
puts in cluster terms) at most every SYNC_S, at once after a 429, so a gateway's cap on
requests in flight is learned once for all of them, not once per worker. Shares are of the
workers planned, from the first request (not of those joined so far, which would let the
first ones take the whole limit each), and a share is given only from what the others may
still have in flight leaves free (pool.py's `_share`: a worker whose share shrank counts at
its old share and its requests in flight until its next sync): the cluster never has more in
flight than its limit, even while a worker has not yet heard that it shrank; below one
request a worker, a worker's share is 0.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pipeline.ray.pool import LEASE_S, SYNC_S
from pipeline.ray.pool import CapacityPool as CapacityPool
from pipeline.ray.pool import Grant as Grant
from pipeline.ray.pool import InFlight as InFlight
from pipeline.ray.pool import LocalPool as LocalPool
from pipeline.ray.pool import Share as Share
from pipeline.send.buckets import KINDS, TokenBucket
from pipeline.send.limits import Clock, Gate, Limiter, Sleep
from pipeline.send.pressure import PressureControl


class Pool(Protocol):
    """The pool as a worker reaches it: in process (tests) or a Ray actor's handle."""

    async def lease(self, amounts: Mapping[str, float]) -> Grant: ...
    async def give_back(self, amounts: Mapping[str, float]) -> None: ...
    async def cool_down(self, seconds: float) -> float: ...
    async def lower(self, kind: str, per_minute: float) -> None: ...
    async def sync(self, worker: str, news: InFlight) -> Share: ...


class Leases:
    """A worker's capacity source (send/limits.py's Capacity): what it holds of the pool's
    buckets, leased in chunks; and its link to the cluster's concurrency control (its news
    out, its share back to its own control). `bind` it to the Limiter's gate and control."""

    scalable = False  # the cluster's rates are not one worker's to slow down

    def __init__(
        self,
        pool: Pool,
        limits: Mapping[str, float],
        *,
        workers: int,
        name: str,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.pool, self.name, self.workers = pool, name, workers
        self._clock, self._sleep = clock, sleep
        self.limits = {k: float(v) for k, v in limits.items() if v and k in KINDS}
        self.chunk = {k: self._chunk(v) for k, v in self.limits.items()}
        self.held = dict.fromkeys(self.limits, 0.0)
        self.gate: Gate | None = None
        self.control: PressureControl | None = None
        self._answered, self._answered_level, self._refused = 0, 0, list[int]()
        self._synced_at, self._syncing, self._left = -math.inf, False, False
        self._asking = False  # a share of 0: a sync of its own is on its way
        self._leasing = asyncio.Lock()
        self._told: set[asyncio.Task[object]] = set()  # pool calls nobody waits for

    @property
    def buckets(self) -> Mapping[str, TokenBucket]:
        return {}  # none of its own: the pool's are the cluster's

    def bind(self, gate: Gate | None, control: PressureControl) -> None:
        self.gate, self.control = gate, control

    async def take(
        self, amounts: Mapping[str, float], hold: Callable[[float], None]
    ) -> dict[str, float] | None:
        """From what this worker holds; when short, one lease at a time (the others use what
        it brings), after which the Limiter asks again."""
        wanted = {k: amounts[k] for k in self.held}
        short = {k: a for k, a in wanted.items() if self.held[k] < a}
        if not short:
            for kind, amount in wanted.items():
                self.held[kind] -= amount
            return wanted
        async with self._leasing:
            if any(self.held[k] < a for k, a in short.items()):
                await self._lease({k: max(a, self.chunk[k]) for k, a in short.items()}, hold)
        return None

    async def _lease(self, amounts: dict[str, float], hold: Callable[[float], None]) -> None:
        grant = await self.pool.lease(amounts)
        if grant.resume_in_s > 0:
            hold(grant.resume_in_s)  # a cooldown in force: this worker's senders wait too
        if grant.ready_in_s > 0:
            await self._sleep(grant.ready_in_s)
        for kind, amount in grant.amounts.items():
            self.held[kind] += amount

    def give_back(self, taken: Mapping[str, float]) -> None:
        for kind, amount in taken.items():
            if kind in self.held:
                self.held[kind] += amount

    def settle(self, reserved: Mapping[str, float], used: Mapping[str, float]) -> None:
        """The correction is kept as this worker's credit (or debt)."""
        for kind in ("input_tokens", "output_tokens", "tokens"):
            if kind in self.held:
                self.held[kind] += reserved.get(kind, 0.0) - used[kind]

    def lower(self, kind: str, per_minute: float) -> None:
        """A limit learned from the server (or lowered): the pool's, for every worker."""
        self.limits[kind] = per_minute
        if kind not in self.held:
            self.held[kind] = 0.0
        self.chunk[kind] = self._chunk(per_minute)
        self._tell(self.pool.lower(kind, per_minute))

    def scale(self, factor: float) -> None:
        """Never asked (not `scalable`): the cluster's rates stay as the pool holds them."""

    def cool_down(self, seconds: float) -> None:
        self._tell(self.pool.cool_down(seconds))  # every worker waits it out

    def _chunk(self, per_minute: float) -> float:
        """A lease: this worker's part of LEASE_S of the rate (at least one)."""
        return max(1.0, per_minute / 60.0 * LEASE_S / self.workers)

    def answered(self, level: int) -> None:
        self._answered += 1
        self._answered_level = max(self._answered_level, level)
        self._sync_soon()

    def refused(self, level: int) -> None:
        self._refused.append(level)
        self._sync_soon(at_once=True)

    def _sync_soon(self, *, at_once: bool = False) -> None:
        if self._left or self._syncing:
            return
        if not at_once and self._clock() - self._synced_at < SYNC_S:
            return
        self._syncing = True
        self._tell(self.sync())

    async def sync(self) -> None:
        """This worker's news to the pool; its share of the requests in flight back."""
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
        if self.gate is not None and self.control is not None:
            self.control.share(share.limit)
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
            await self.sync()

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


class LeasedLimiter(Limiter):
    """A worker's Limiter: its capacity is `Leases` from the pool, and its controller takes
    the cluster's share as its gate's ceiling (the pool's controller searches for caps).
    Only parts differ; every method is the Limiter's. Call `join` before the first request
    and `release_unused` after the last."""

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
        name = name or f"worker-{id(self):x}"
        self.leases = Leases(pool, limits, workers=workers, name=name, clock=clock, sleep=sleep)
        super().__init__(
            concurrency=concurrency, capacity=self.leases, cluster=self.leases, clock=clock,
            sleep=sleep,
        )  # fmt: skip
        self.leases.bind(self.gate, self.control)

    async def join(self) -> None:
        """Before the first request: this worker's share of the requests in flight."""
        await self.leases.sync()

    async def release_unused(self, *, pausing: bool = False) -> None:
        await self.leases.release_unused(pausing=pausing)


def job_limits(limits: Any) -> dict[str, float]:
    """A job's [limits] as the pool's buckets, by kind (only those it sets)."""
    by_kind = {
        "requests": limits.requests_per_minute,
        "input_tokens": limits.input_tokens_per_minute,
        "output_tokens": limits.output_tokens_per_minute,
        "tokens": limits.tokens_per_minute,
    }
    return {kind: float(value) for kind, value in by_kind.items() if value}
