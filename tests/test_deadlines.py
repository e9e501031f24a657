"""send/deadlines.py: one timer for many attempts' deadlines, expiring as asyncio.timeout."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from pipeline.send.deadlines import Deadline, Deadlines


async def attempt(deadlines: Deadlines, seconds: float, takes: float) -> str:
    """An attempt of `takes` seconds under a deadline of `seconds`, as the transport runs it."""
    deadline = deadlines.enter(seconds)
    error: BaseException | None = None
    try:
        await asyncio.sleep(takes)
        return "answered"
    except BaseException as e:
        error = e
        raise
    finally:
        deadlines.leave(deadline, error)


def test_an_attempt_past_its_deadline_times_out_then_and_not_before() -> None:
    async def main() -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await attempt(Deadlines(), 0.2, 5.0)
        return time.monotonic() - started

    took = asyncio.run(main())
    assert 0.18 <= took < 1.0


def test_attempts_in_time_are_answered_and_leave_nothing_behind() -> None:
    async def main() -> tuple[list[str], int]:
        deadlines = Deadlines()
        results = await asyncio.gather(*(attempt(deadlines, 5.0, 0.01) for _ in range(50)))
        lanes = list(deadlines._lanes.values())
        return results, sum(len(lane.waiting) for lane in lanes)

    results, waiting = asyncio.run(main())
    assert results == ["answered"] * 50
    assert waiting == 0


def test_only_the_attempts_past_their_deadline_expire_in_a_lane() -> None:
    async def main() -> list[object]:
        deadlines = Deadlines()
        tasks = [
            asyncio.create_task(attempt(deadlines, 0.3, takes))
            for takes in (0.05, 5.0, 0.1, 5.0, 0.01)
        ]
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert [type(o).__name__ for o in outcomes] == [
        "str", "TimeoutError", "str", "TimeoutError", "str",
    ]  # fmt: skip


def test_lanes_of_different_lengths_keep_their_own_deadlines() -> None:
    async def main() -> list[object]:
        deadlines = Deadlines()
        long = asyncio.create_task(attempt(deadlines, 5.0, 0.4))
        short = asyncio.create_task(attempt(deadlines, 0.1, 0.4))
        return await asyncio.gather(long, short, return_exceptions=True)

    long, short = asyncio.run(main())
    assert long == "answered"
    assert isinstance(short, TimeoutError)


def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    async def main() -> None:
        deadlines = Deadlines()
        task = asyncio.create_task(attempt(deadlines, 0.1, 5.0))
        await asyncio.sleep(0.01)
        task.cancel()  # the caller's, before the deadline
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def expire_by_hand(deadlines: Deadlines) -> tuple[Any, Deadline]:
    """The one attempt in flight made due now, and its lane's timer fired by hand."""
    (lane,) = deadlines._lanes.values()
    (deadline,) = lane.waiting
    deadline.when = 0.0
    lane._fire()
    return lane, deadline


def test_a_cancellation_from_outside_after_expiry_is_not_swallowed() -> None:
    async def main() -> None:
        deadlines = Deadlines()
        task = asyncio.create_task(attempt(deadlines, 60.0, 5.0))
        await asyncio.sleep(0.01)  # the attempt is in flight under its deadline
        _, deadline = expire_by_hand(deadlines)
        assert deadline.expired
        task.cancel()  # the caller's too, in the same turn: as with asyncio.timeout, a
        with pytest.raises(asyncio.CancelledError):  # cancellation, never a TimeoutError
            await task

    asyncio.run(main())


def test_an_expiry_fired_by_hand_alone_is_a_timeout() -> None:
    async def main() -> None:
        deadlines = Deadlines()
        task = asyncio.create_task(attempt(deadlines, 60.0, 5.0))
        await asyncio.sleep(0.01)
        lane, _ = expire_by_hand(deadlines)
        with pytest.raises(TimeoutError):
            await task
        assert not lane.waiting

    asyncio.run(main())
