"""Shared by the tests: one fake clock, and one simulator for a module's tests.

`FakeTime` is a tiny virtual-time scheduler. Inside `run()`, `sleep(d)` parks the caller
until the clock reaches now + d, and the clock jumps straight to the next wake-up whenever
every task is parked; outside it, `sleep(d)` just moves the clock. Nothing really waits,
and recorded times are exact.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from pipeline.simulator.process import SimulatorProcess


class FakeTime:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []  # every duration asked for, in order
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._scheduling = False  # inside run(): sleepers park until their wake-up

    def clock(self) -> float:
        return self.now

    __call__ = clock  # usable wherever a clock function is wanted

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if not self._scheduling:  # outside run(): the clock just jumps
            self.now += max(seconds, 0.0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), next(self._seq), future))
        await future

    async def _settle(self) -> None:
        for _ in range(50):  # let every runnable task run until it parks again
            await asyncio.sleep(0)

    async def run(self, *coros: Awaitable[Any]) -> list[Any]:
        """Run coroutines concurrently, in virtual time; their results in order."""
        self._scheduling = True
        tasks = [asyncio.ensure_future(c) for c in coros]
        await self._settle()
        while not all(t.done() for t in tasks):
            while self._sleepers and self._sleepers[0][2].done():  # cancelled sleepers
                heapq.heappop(self._sleepers)
            if not self._sleepers:
                raise AssertionError("deadlock: tasks wait on something other than sleep")
            wake, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            future.set_result(None)
            await self._settle()
        return [t.result() for t in tasks]

    def at(self, delay: float, action: Callable[[], Any]) -> Awaitable[None]:
        """A coroutine that does `action()` `delay` virtual seconds from now."""

        async def later() -> None:
            await self.sleep(delay)
            action()

        return later()


def drive(ft: FakeTime, *coros: Awaitable[Any]) -> list[Any]:
    return asyncio.run(ft.run(*coros))


@pytest.fixture
def ft() -> FakeTime:
    return FakeTime()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    """A simulator with its defaults, in its own process on loopback, for the module's
    tests (a module that needs other settings defines its own `sim`)."""
    with SimulatorProcess() as simulator:
        yield simulator
