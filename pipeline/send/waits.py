"""Calls waiting for their turn (the limiter, a retry's pause), and the stop that ends
those waits at once (`halt`). A wait that ends by halt's cancellation alone is the stop's:
the client raises NotSent, the row stays to do and its caller goes on to the next. Any
other cancellation stays one, also one that comes with a halt: a second Ctrl-C heard in the
same turn of the loop as the first (as a Ray worker hears them, passed on by its driver)
cancels every call as it stops the run, and a call that went on as NotSent would then wait
for rows no one feeds any more (a Ray worker did, until its driver killed it 10 s on).
"""

from __future__ import annotations

import asyncio


class Waits:
    def __init__(self) -> None:
        self.halted = False  # set by halt(): attempts not yet sent never will be
        self._cancels: dict[asyncio.Task[object], int] = {}  # waiting: halt()'s cancels of each

    def begin(self) -> asyncio.Task[object]:
        """The current task, waiting from now until `end`."""
        task = asyncio.current_task()
        assert task is not None
        self._cancels[task] = 0
        return task

    def end(self, task: asyncio.Task[object]) -> None:
        self._cancels.pop(task, None)

    def halt(self) -> None:
        """Every wait ends at once (cancelled), and none begins again."""
        self.halted = True
        for task in self._cancels:
            task.cancel()
            self._cancels[task] += 1

    def by_halt_alone(self, task: asyncio.Task[object]) -> bool:
        """Whether the cancellation `task` just got (between `begin` and `end`) was halt()'s
        alone; if so it is taken back (`uncancel`): it was the stop's, not the task's."""
        by_halt = self._cancels.get(task, 0)
        if not by_halt or task.cancelling() > by_halt:
            return False
        for _ in range(by_halt):
            task.uncancel()
        return True
