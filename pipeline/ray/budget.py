"""A worker's side of the cluster's one budget: `ClusterBudget`, the `Budget` (send/budget.py)
every worker of a `--ray` run asks, leased from the pool actor's (pool.py keeps the sums).
No Ray here: a LocalPool stands for the actor in tests.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Protocol

from pipeline.errors import BudgetReached
from pipeline.ray.pool import BudgetAnswer


class BudgetPool(Protocol):
    """The pool's budget face: the actor's (RayPool), or a LocalPool in tests."""

    async def reserve(self, worst_usd: str, worker: str) -> BudgetAnswer: ...

    async def settled_after(self, settles: int) -> None: ...

    async def settle(self, worst_usd: str, actual_usd: str | None, worker: str) -> None: ...


class ClusterBudget:
    """max_cost_usd across the cluster, a `Budget` leased from the pool actor: a request is
    sent only while everything spent and in flight on every worker, plus its worst case,
    fits. The actor's LocalBudget decides (pool.py, with each worker's reservations: a
    worker that dies has them counted as spent) and words a refusal; a request that does
    not fit yet waits on the actor for the next settle anywhere, never polling."""

    def __init__(self, pool: BudgetPool, worker: str) -> None:
        self.pool, self.worker = pool, worker
        self._told: set[asyncio.Task[None]] = set()
        self._waits: dict[int, asyncio.Future[None]] = {}  # one per count, for every row

    async def reserve(self, worst: Decimal) -> None:
        while True:
            answer = await self.pool.reserve(str(worst), self.worker)
            if answer.refusal is not None:
                raise BudgetReached(answer.refusal)
            if answer.reserved:
                return
            await self._settled_after(answer.settles)  # another request in flight ends first

    async def _settled_after(self, settles: int) -> None:
        """One call on the actor however many of this worker's rows wait for the same
        settle (the actor's calls in flight are few); a row that gives up (a stop) leaves
        it to the others. (It holds nothing: left waiting, it only ends later.)"""
        waiting = self._waits.get(settles)
        if waiting is None:
            waiting = self._waits[settles] = asyncio.ensure_future(self.pool.settled_after(settles))
            waiting.add_done_callback(lambda _: self._waits.pop(settles, None))
        await asyncio.shield(waiting)

    def settle(self, worst: Decimal, actual_usd: float | None) -> None:
        actual = None if actual_usd is None else repr(actual_usd)
        call = self.pool.settle(str(worst), actual, self.worker)
        task = asyncio.get_running_loop().create_task(call)
        self._told.add(task)
        task.add_done_callback(self._told.discard)
