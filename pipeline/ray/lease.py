"""One rate limit, one cooldown and one budget for many workers: capacity in leases.

`CapacityPool` holds the job's buckets (requests, input, output, combined tokens), the
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
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from pipeline.send.limits import (
    KINDS,
    Clock,
    Gate,
    Limiter,
    Sleep,
    Ticket,
    TokenBucket,
    attempt_amounts,
)
from pipeline.send.pressure import ConcurrencyControl

LEASE_S = 0.25  # a lease is this long of the rate (at least one request)
POOL_BURST_S = 0.5  # the pool's buckets hold this much of their rate
SYNC_S = 0.1  # a worker tells the pool its concurrency news at most this often
RECENT_S = 0.5  # a 429 is reported within this long of its request's sending


class ClusterGate:
    """The cluster's requests in flight: only a limit (each worker's own gate admits its
    share of it), moved by the pool's ConcurrencyControl."""

    def __init__(self, ceiling: int) -> None:
        self.limit = self.ceiling = ceiling

    def set_limit(self, limit: int) -> None:
        self.limit = max(1, min(limit, self.ceiling))


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


@dataclass(frozen=True)
class InFlight:
    """A worker's concurrency news since its last sync. Levels are the worker's own
    requests in flight; the pool adds the others' (as they last reported them)."""

    active: int = 0  # its requests in flight now
    answered: int = 0  # 2xx answers
    answered_level: int = 0  # the highest level one of them was sent at
    refused: tuple[int, ...] = ()  # levels that drew an unexplained 429
    leaving: bool = False  # the worker is done: its share goes to the others
    pausing: bool = False  # between batches (process()): its place stays, no share held


@dataclass(frozen=True)
class Share:
    limit: int  # this worker's requests in flight (0: no cap)


@dataclass(frozen=True)
class Grant:
    amounts: dict[str, float]
    ready_in_s: float  # usable after this long (the pool was in debt)
    resume_in_s: float  # a cooldown is in force: nobody sends for this long


class CapacityPool:
    """The cluster's pacing state; plain methods (a Ray actor calls them one at a time)."""

    def __init__(
        self,
        limits: Mapping[str, float],
        *,
        max_cost_usd: str | None = None,
        concurrency: int | None = None,
        workers: int = 1,  # planned: the limit is split among them from the start
        spent_before_usd: str = "0",
        clock: Clock = time.monotonic,
    ) -> None:
        self.clock = clock
        self.planned = max(1, workers)
        self.places: dict[str, int] = {}  # a joined worker's place among the planned
        self.cooldowns = 0  # cooldowns any worker's 429 started or lengthened
        self.notes: list[str] = []  # what the concurrency control changed, for the driver
        self._told: deque[str] = deque(maxlen=4)
        self.gate = ClusterGate(concurrency) if concurrency else None
        self._limits: deque[tuple[float, int]] = deque()  # (when, the cluster's limit)
        self.control = (
            ConcurrencyControl(self.gate, clock=clock, note=self._note)
            if self.gate is not None
            else None
        )
        self.active: dict[str, int] = {}  # requests in flight, by worker, at its last sync
        self.shares: dict[str, int] = {}  # what each worker was last given
        self.reported: dict[str, float] = {}  # when each worker last said what it saw
        self.limits = {k: float(v) for k, v in limits.items() if v and k in KINDS}
        self.buckets = {kind: self._bucket(value) for kind, value in self.limits.items()}
        self.resume_at = 0.0
        self.budget = Decimal(max_cost_usd) if max_cost_usd is not None else None
        self.spent = Decimal(spent_before_usd)  # with earlier runs', as a local Budget
        self.held_by: dict[str, Decimal] = {}  # reserved, by worker (a dead one's is spent)

    @property
    def reserved(self) -> Decimal:
        """The worst case of every request in flight, cluster wide."""
        return sum(self.held_by.values(), Decimal(0))

    def _bucket(self, per_minute: float) -> TokenBucket:
        return TokenBucket.per_minute(per_minute, burst_s=POOL_BURST_S, clock=self.clock)

    def _note(self, text: str) -> None:
        """Said once: a probe at the cap goes up and down by one, again and again."""
        if text not in self._told:
            self._told.append(text)
            self.notes.append(text)

    def lease(self, amounts: Mapping[str, float]) -> Grant:
        taken = {k: float(a) for k, a in amounts.items() if k in self.buckets and a > 0}
        waits = [self.buckets[k].take(a) for k, a in taken.items()]
        now = self.clock()
        return Grant(taken, max(waits, default=0.0), max(0.0, self.resume_at - now))

    def give_back(self, amounts: Mapping[str, float]) -> None:
        for kind, amount in amounts.items():
            if kind in self.buckets and amount > 0:
                self.buckets[kind].give_back(amount)

    def cool_down(self, seconds: float) -> float:
        """Any worker's 429: every worker waits; the seconds left of the cooldown."""
        now = self.clock()
        if now + seconds > self.resume_at:
            self.resume_at = now + seconds
            self.cooldowns += 1
        return self.resume_at - now

    def lower(self, kind: str, per_minute: float) -> None:
        """A limit the server reported lower than ours: the whole cluster adopts it."""
        current = self.limits.get(kind)
        if (current is not None and per_minute >= current) or kind not in KINDS:
            return
        self.limits[kind] = per_minute
        if kind in self.buckets:
            self.buckets[kind].set_per_minute(per_minute)
        else:
            self.buckets[kind] = self._bucket(per_minute)

    def sync(self, worker: str, news: InFlight) -> Share:
        """A worker's news in; its share of the cluster's requests in flight out."""
        if news.leaving or news.pausing:
            for known in (self.active, self.shares, self.reported):
                known.pop(worker, None)
            if news.leaving and self.places.pop(worker, None) is not None:
                self.planned = max(1, self.planned - 1)  # done for good: fewer to share
            return Share(0)
        self.active[worker] = news.active
        self._place(worker)
        if news.answered or news.refused:  # a report from sending; a join's 0 is no report
            self.reported[worker] = self.clock()
        if self.control is None or self.gate is None:
            return Share(0)
        others = sum(self._in_flight(name) for name in self.active if name != worker)
        # In cluster terms a level is only estimated (the others' requests in flight as they
        # last said), and never more than the shares allow: at most the limit, or for a 429
        # (sent moments ago) the highest limit of the last RECENT_S.
        recent = self._recent_limit()
        if news.refused:  # one signal a sync, as one a round locally: a batch of 429s
            self.control.unexplained_429(min(max(news.refused) + others, recent))
        for _ in range(min(news.answered, self.gate.ceiling)):  # slow start counts answers
            self.control.answered(min(news.answered_level + others, self.gate.limit))
        self.control.tick()
        self.shares[worker] = self._share(worker)
        return Share(self.shares[worker])

    def _recent_limit(self) -> int:
        """The highest cluster limit of the last RECENT_S: a 429 reported now was drawn by
        a request sent under it (shares lowered since do not undo it)."""
        assert self.gate is not None
        now, limits = self.clock(), self._limits
        while limits and now - limits[0][0] > RECENT_S:
            limits.popleft()
        limits.append((now, self.gate.limit))
        return max(limit for _, limit in limits)

    def _place(self, worker: str) -> None:
        """A joining worker takes the first free place (a dead one's, for its successor)."""
        if worker not in self.places:
            taken = set(self.places.values())
            self.places[worker] = next(i for i in range(len(taken) + 1) if i not in taken)

    def _share(self, worker: str) -> int:
        """Its part of the limit split among the planned workers (places of workers yet to
        join are kept for them), but never more than the others' last shares leave free."""
        assert self.gate is not None
        limit, count = self.gate.limit, max(self.planned, len(self.active))
        rank = sorted(self.places[name] for name in self.active).index(self.places[worker])
        fair = limit // count + (1 if rank < limit % count else 0)
        free = limit - sum(share for name, share in self.shares.items() if name != worker)
        return max(0, min(fair, free))

    def _in_flight(self, worker: str) -> int:
        """A worker's requests in flight as the pool best knows: what it said within the
        last two syncs; else (it has not reported since it joined, or not lately) its whole
        share, as in a bulk job where rows queue behind every gate."""
        if self.clock() - self.reported.get(worker, -math.inf) <= 2 * SYNC_S:
            return self.active[worker]
        return max(self.active[worker], self.shares.get(worker, 0))

    def reserve(self, worst_usd: str, worker: str = "") -> bool:
        """Room for a request of this worst case beside everything in flight, cluster wide?"""
        worst = Decimal(worst_usd)
        if self.budget is not None and self.spent + self.reserved + worst > self.budget:
            return False
        self.held_by[worker] = self.held_by.get(worker, Decimal(0)) + worst
        return True

    def settle(self, worst_usd: str, actual_usd: str | None, worker: str = "") -> None:
        """A reserved request ended; None: its cost is unknown, counted at its worst case."""
        worst = Decimal(worst_usd)
        self.held_by[worker] = self.held_by.get(worker, Decimal(0)) - worst
        self.spent += worst if actual_usd is None else Decimal(actual_usd)

    def lost(self, worker: str) -> None:
        """A worker died: its place waits for its successor, and what it had in flight
        counts as spent at its worst case (those answers may have been paid; the budget
        never waits on reservations nobody will settle)."""
        self.sync(worker, InFlight(pausing=True))
        self.places.pop(worker, None)
        self.spent += self.held_by.pop(worker, Decimal(0))

    def settled(self) -> str | None:
        """Where the cluster's requests in flight ended up, for the summary."""
        return self.control.settled() if self.control is not None else None


class Pool(Protocol):
    """The pool as a worker reaches it: in process (tests) or a Ray actor's handle."""

    async def lease(self, amounts: Mapping[str, float]) -> Grant: ...
    async def give_back(self, amounts: Mapping[str, float]) -> None: ...
    async def cool_down(self, seconds: float) -> float: ...
    async def lower(self, kind: str, per_minute: float) -> None: ...
    async def sync(self, worker: str, news: InFlight) -> Share: ...


class LocalPool:
    """A CapacityPool in this process, behind the async face workers use."""

    def __init__(self, pool: CapacityPool) -> None:
        self.pool = pool

    async def lease(self, amounts: Mapping[str, float]) -> Grant:
        return self.pool.lease(amounts)

    async def give_back(self, amounts: Mapping[str, float]) -> None:
        self.pool.give_back(amounts)

    async def cool_down(self, seconds: float) -> float:
        return self.pool.cool_down(seconds)

    async def lower(self, kind: str, per_minute: float) -> None:
        self.pool.lower(kind, per_minute)

    async def sync(self, worker: str, news: InFlight) -> Share:
        return self.pool.sync(worker, news)


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
