"""The named Ray actor that holds a job's CapacityPool, and the async face workers use.

One actor per output directory (its name is derived from the directory), detached so a
worker that outlives the driver for a moment still finds it; the driver kills it at the end.
Calls are small and few: a lease is a quarter second of the rate.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray

from pipeline.ray.outage import ClusterOutage, OutageNews, OutageView
from pipeline.ray.pool import BudgetAnswer, CapacityPool, Grant, InFlight, Share

NAMESPACE = "pipeline"


@ray.remote(num_cpus=0)
class PoolActor:
    def __init__(
        self,
        limits: Mapping[str, float],
        max_cost_usd: str | None,
        concurrency: int | None,
        workers: int,
        spent_before_usd: str,
    ) -> None:
        self.pool = CapacityPool(
            limits, max_cost_usd=max_cost_usd, concurrency=concurrency, workers=workers,
            spent_before_usd=spent_before_usd,
        )  # fmt: skip
        self.outage_record = ClusterOutage(note=lambda text: self.pool.notes.append(text))
        self.counts: dict[str, float] = {"ok": 0, "error": 0, "cost": 0.0, "requests": 0}
        self.retries: Counter[str] = Counter()

    def lease(self, amounts: Mapping[str, float]) -> Grant:
        return self.pool.lease(amounts)

    def give_back(self, amounts: Mapping[str, float]) -> None:
        self.pool.give_back(amounts)

    def cool_down(self, seconds: float) -> float:
        return self.pool.cool_down(seconds)

    def lower(self, kind: str, per_minute: float) -> None:
        self.pool.lower(kind, per_minute)

    def sync(self, worker: str, news: InFlight) -> Share:
        return self.pool.sync(worker, news)

    def outage(self, worker: str, news: OutageNews) -> OutageView:
        return self.outage_record.report(worker, news)

    def reserve(self, worst_usd: str, worker: str) -> BudgetAnswer:
        return self.pool.reserve(worst_usd, worker)

    async def settled_after(self, settles: int) -> None:
        """Returns once a reservation was settled after `settles` (a worker's rows that did
        not fit wait here, on the actor's event loop, where every other method runs too:
        one async method makes this an async actor, its calls still one at a time between
        awaits)."""
        await self.pool.settled_after(settles)

    def settle(self, worst_usd: str, actual_usd: str | None, worker: str) -> None:
        self.pool.settle(worst_usd, actual_usd, worker)

    def lost(self, worker: str) -> None:
        self.pool.lost(worker)
        self.outage_record.lost(worker)  # a probe it held is over

    def tally(
        self, ok: int, error: int, cost: float, requests: int, retries: Mapping[str, int]
    ) -> None:
        """A worker's progress, for the driver's bar and the summary (told as it goes, so a
        worker that dies has its requests counted up to its last tally)."""
        self.counts["ok"] += ok
        self.counts["error"] += error
        self.counts["cost"] += cost
        self.counts["requests"] += requests
        self.retries.update(retries)

    def progress(self) -> dict[str, Any]:
        notes, self.pool.notes = self.pool.notes, []
        return {
            **self.counts, "notes": notes, "retries": dict(self.retries),
            "cooldowns": self.pool.cooldowns, "settled": self.pool.settled(),
        }  # fmt: skip


def actor_name(output: Path) -> str:
    digest = hashlib.sha256(str(output.resolve()).encode()).hexdigest()[:16]
    return f"pipeline-pool-{digest}"


def start_pool(
    output: Path,
    limits: Mapping[str, float],
    max_cost_usd: str | None,
    concurrency: int | None,
    *,
    workers: int,
    spent_before_usd: str = "0",
    detached: bool = True,
) -> Any:
    """The pool actor of this output, started fresh (one driver runs a job at a time)."""
    name = actor_name(output)
    with contextlib.suppress(ValueError):  # none left by an earlier driver
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
    return PoolActor.options(  # type: ignore[attr-defined]
        name=name, namespace=NAMESPACE, lifetime="detached" if detached else None
    ).remote(limits, max_cost_usd, concurrency, workers, spent_before_usd)


class RayPool:
    """The actor behind the async face a LeasedLimiter and a LeasedOutageWatch take
    (ObjectRefs are awaitable)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def lease(self, amounts: Mapping[str, float]) -> Grant:
        grant: Grant = await self.handle.lease.remote(dict(amounts))
        return grant

    async def give_back(self, amounts: Mapping[str, float]) -> None:
        await self.handle.give_back.remote(dict(amounts))

    async def cool_down(self, seconds: float) -> float:
        left: float = await self.handle.cool_down.remote(seconds)
        return left

    async def lower(self, kind: str, per_minute: float) -> None:
        await self.handle.lower.remote(kind, per_minute)

    async def sync(self, worker: str, news: InFlight) -> Share:
        share: Share = await self.handle.sync.remote(worker, news)
        return share

    async def outage(self, worker: str, news: OutageNews) -> OutageView:
        view: OutageView = await self.handle.outage.remote(worker, news)
        return view

    async def reserve(self, worst_usd: str, worker: str) -> BudgetAnswer:
        answer: BudgetAnswer = await self.handle.reserve.remote(worst_usd, worker)
        return answer

    async def settled_after(self, settles: int) -> None:
        await self.handle.settled_after.remote(settles)

    async def settle(self, worst_usd: str, actual_usd: str | None, worker: str) -> None:
        await self.handle.settle.remote(worst_usd, actual_usd, worker)
