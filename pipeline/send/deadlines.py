"""Deadlines of the attempts in flight, kept with one timer for many instead of one each.

`asyncio.timeout` arms a timer handle for every attempt and cancels it when the attempt
ends (the loop's heap keeps cancelled handles until it cleans up): after aiohttp itself,
the largest cost of an attempt in the transport. Attempts given the same length of deadline
reach it in the order they began, so one timer per length, set for the oldest attempt still
in flight, serves them all: when it fires, every attempt past its deadline is cancelled, and
it is set again for the oldest left. Expiry works as `asyncio.timeout`'s does: the task is
cancelled, and the CancelledError that ends the attempt becomes TimeoutError, unless the
task was also cancelled by someone else (then it stays a cancellation).
"""

from __future__ import annotations

import asyncio


class Deadline:
    """One attempt's deadline, from `Deadlines.enter` to `Deadlines.leave`."""

    __slots__ = ("cancelling", "expired", "lane", "task", "when")

    def __init__(self, lane: _Lane, task: asyncio.Task[object], when: float) -> None:
        self.lane, self.task, self.when = lane, task, when
        self.cancelling = task.cancelling()  # cancellations asked for before this deadline's
        self.expired = False


class _Lane:
    """The attempts in flight with one length of deadline, oldest first (so their
    deadlines are in order), and the one timer set for the oldest's."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: dict[Deadline, None] = {}  # an ordered set: oldest first
        self.timer: asyncio.TimerHandle | None = None

    def add(self, deadline: Deadline) -> None:
        self.waiting[deadline] = None
        if self.timer is None:
            self.timer = self.loop.call_at(deadline.when, self._fire)

    def _fire(self) -> None:
        """Cancel every attempt past its deadline; the timer again for the oldest left."""
        self.timer = None
        now = self.loop.time()
        due = []
        for deadline in self.waiting:  # oldest first: the first not due ends the search
            if deadline.when > now:
                self.timer = self.loop.call_at(deadline.when, self._fire)
                break
            due.append(deadline)
        for deadline in due:
            del self.waiting[deadline]
            deadline.expired = True
            deadline.task.cancel()  # runs nothing now: the task hears of it when it resumes


class Deadlines:
    """Every attempt's deadline, one timer for each length of deadline (a transport's)."""

    def __init__(self) -> None:
        self._lanes: dict[tuple[asyncio.AbstractEventLoop, float], _Lane] = {}

    def enter(self, seconds: float) -> Deadline:
        """The current task's attempt ends within `seconds` or is cancelled (see `leave`)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a deadline needs a task to cancel")
        lane = self._lanes.get((loop, seconds))
        if lane is None:
            lane = self._lanes[(loop, seconds)] = _Lane(loop)
        deadline = Deadline(lane, task, loop.time() + seconds)
        lane.add(deadline)
        return deadline

    @staticmethod
    def leave(deadline: Deadline, error: BaseException | None) -> None:
        """The attempt ended (with `error`, or None). Raises TimeoutError in place of the
        CancelledError its expiry caused (as `asyncio.timeout` does)."""
        if not deadline.expired:
            del deadline.lane.waiting[deadline]
            return
        if deadline.task.uncancel() <= deadline.cancelling and isinstance(
            error, asyncio.CancelledError
        ):
            raise TimeoutError from error
