"""The cluster's side of `--ray`'s one rate limit: `CapacityPool` (the job's buckets, the
cooldown, the limits learned, the budget, the cluster's requests in flight and each
worker's share of them), what it says to a worker (`Grant`, `Share`, `BudgetAnswer`,
hearing `InFlight`) and `LocalPool` (a pool in this process, for tests). lease.py is a
worker's side and says how the two meet.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from pipeline.errors import BudgetReached
from pipeline.send.buckets import KINDS, Clock, TokenBucket
from pipeline.send.budget import LocalBudget
from pipeline.send.limits import Gate
from pipeline.send.pressure import PressureControl

LEASE_S = 0.25  # a lease is this long of the rate (at least one request)
POOL_BURST_S = 0.5  # the pool's buckets hold this much of their rate
SYNC_S = 0.1  # a worker tells the pool its concurrency news at most this often
RECENT_S = 0.5  # a 429 is reported within this long of its request's sending


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
class BudgetAnswer:
    """The pool's word on a worker's reservation: made, refused for good (the refusal's
    text), or neither yet: ask again once the cluster's settles pass `settles`."""

    reserved: bool
    refusal: str | None = None
    settles: int = 0


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
        # the cluster's requests in flight: only its limit is used (each worker's own gate
        # admits its share of it), moved by the pool's PressureControl
        self.gate = Gate(concurrency) if concurrency else None
        self._limits: deque[tuple[float, int]] = deque()  # (when, the cluster's limit)
        self.control = (
            PressureControl(self.gate, clock=clock, note=self._note)
            if self.gate is not None
            else None
        )
        self.active: dict[str, int] = {}  # requests in flight, by worker, at its last sync
        self.shares: dict[str, int] = {}  # what each worker was last given
        # the most each worker may have in flight until its next sync (_bound)
        self.bounds: dict[str, int] = {}
        self.reported: dict[str, float] = {}  # when each worker last said what it saw
        self.limits = {k: float(v) for k, v in limits.items() if v and k in KINDS}
        self.buckets = {kind: self._bucket(value) for kind, value in self.limits.items()}
        self.resume_at = 0.0
        # the cluster's sums, with earlier runs' spent, kept as a local run keeps its own
        # (no max_cost_usd: nothing is ever refused)
        self.budget = LocalBudget(
            "Infinity" if max_cost_usd is None else max_cost_usd, spent_before_usd
        )
        self.held_by: dict[str, Decimal] = {}  # reserved, by worker (a dead one's is spent)

    @property
    def reserved(self) -> Decimal:
        """The worst case of every request in flight, cluster wide."""
        return self.budget.reserved

    @property
    def spent(self) -> Decimal:
        return self.budget.spent

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
            for known in (self.active, self.shares, self.bounds, self.reported):
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
        given_before = self.shares.get(worker, 0)
        self.shares[worker] = self._share(worker)
        self.bounds[worker] = max(news.active, given_before, self.shares[worker])
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
        join are kept for them), but never more than what the others may have in flight
        leaves free: a worker whose share went down may still have the requests its larger
        share let it send, and it keeps sending at that share until the smaller one reaches
        it. So a worker's bound, from one of its syncs to the next, is the most of: the
        requests it said it had in flight, the share it had, and the share it was given."""
        assert self.gate is not None
        limit, count = self.gate.limit, max(self.planned, len(self.active))
        rank = sorted(self.places[name] for name in self.active).index(self.places[worker])
        fair = limit // count + (1 if rank < limit % count else 0)
        free = limit - sum(bound for name, bound in self.bounds.items() if name != worker)
        return max(0, min(fair, free))

    def _in_flight(self, worker: str) -> int:
        """A worker's requests in flight as the pool best knows: what it said within the
        last two syncs; else (it has not reported since it joined, or not lately) its whole
        share, as in a bulk job where rows queue behind every gate."""
        if self.clock() - self.reported.get(worker, -math.inf) <= 2 * SYNC_S:
            return self.active[worker]
        return max(self.active[worker], self.shares.get(worker, 0))

    def reserve(self, worst_usd: str, worker: str = "") -> BudgetAnswer:
        """Room for a request of this worst case beside everything in flight, cluster wide?"""
        worst = Decimal(worst_usd)
        try:
            if not self.budget.try_reserve(worst):
                return BudgetAnswer(reserved=False, settles=self.budget.settles)
        except BudgetReached as e:  # nothing in flight anywhere: nothing will make room
            return BudgetAnswer(reserved=False, refusal=str(e))
        self.held_by[worker] = self.held_by.get(worker, Decimal(0)) + worst
        return BudgetAnswer(reserved=True)

    async def settled_after(self, settles: int) -> None:
        """Return once a reservation anywhere in the cluster was settled after `settles`."""
        await self.budget.settled_after(settles)

    def settle(self, worst_usd: str, actual_usd: str | None, worker: str = "") -> None:
        """A reserved request ended; None: its cost is unknown, counted at its worst case."""
        worst = Decimal(worst_usd)
        self.held_by[worker] = self.held_by.get(worker, Decimal(0)) - worst
        self.budget.settle(worst, None if actual_usd is None else float(actual_usd))

    def lost(self, worker: str) -> None:
        """A worker died: its place waits for its successor, and what it had in flight
        counts as spent at its worst case (those answers may have been paid; the budget
        never waits on reservations nobody will settle)."""
        self.sync(worker, InFlight(pausing=True))
        self.places.pop(worker, None)
        self.budget.settle(self.held_by.pop(worker, Decimal(0)), None)

    def settled(self) -> str | None:
        """Where the cluster's requests in flight ended up, for the summary."""
        return self.control.settled() if self.control is not None else None


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

    async def reserve(self, worst_usd: str, worker: str) -> BudgetAnswer:
        return self.pool.reserve(worst_usd, worker)

    async def settled_after(self, settles: int) -> None:
        await self.pool.settled_after(settles)

    async def settle(self, worst_usd: str, actual_usd: str | None, worker: str) -> None:
        self.pool.settle(worst_usd, actual_usd, worker)
