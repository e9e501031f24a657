"""One outage for many workers: the failures in a row, the verdict that the API is down and
the probe lane are the cluster's, not each worker's.

Locally `OutageWatch` (send/pressure.py) counts transient failures in a row, declares the
API down after FAILURES_FOR_OUTAGE, then lets one probe at a time through with growing
waits (PROBE_WAITS_S) until one succeeds. With one watch a worker, N workers would each need
their own failures to see it and then each probe: N times the failed attempts. Here the pool
actor keeps one `ClusterOutage` (the failures in a row, down since, probes sent, when the
next may go, who holds the lane), and each worker's client gets a `LeasedOutageWatch`:

- it tells the pool of every failure, of a success or a first trouble when the cluster's
  record (as last heard) shows failures, trouble or an outage, and of any of them at least
  every HEARD_S, so successes elsewhere keep resetting the count. Calls go one at a time
  and in order; what comes while one is on its way goes with the next.
- while the cluster has failures in a row, or is down, an attempt first asks the pool: "go"
  (no outage), "probe" (the one probe of the whole cluster, this attempt sends it) or
  "wait" some seconds. The pool cannot wake a worker (its calls are short, one at a time),
  so the wait is exact when the next probe's time is known (after the last one's verdict);
  while a probe is on its way elsewhere, the worker asks again every RE_ASK_S, one task a
  worker (the others queue behind it locally).
- patience runs from the cluster's first trouble since the cluster's last success; before
  stopping the run a worker asks the pool once more (another worker may have succeeded).

Times cross the wire as durations (monotonic clocks of different nodes do not agree).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from pipeline.errors import ApiUnavailable
from pipeline.send.limits import Clock, Sleep
from pipeline.send.pressure import FAILURES_FOR_OUTAGE, PROBE_WAITS_S, OutageWatch

HEARD_S = 0.25  # a worker with news tells the pool at least this often
RE_ASK_S = 0.25  # a probe is on its way on another worker: ask again after this long


@dataclass(frozen=True)
class OutageNews:
    """A worker's outcomes since its last call, in this order: a success, then `failed`
    transient failures (those before the success no longer count), then trouble."""

    succeeded: bool = False
    succeeded_s_ago: float = 0.0  # how long before the telling the success came
    failed: int = 0
    troubled: bool = False  # an attempt not answered with success (a 429 too)
    released: bool = False  # its probe's verdict is in (or it was never sent)
    asking: bool = False  # an attempt wants to go: "go", "probe" or "wait"

    def __bool__(self) -> bool:
        return self != OutageNews()


@dataclass(frozen=True)
class OutageView:
    """The cluster's record as the pool has it, in durations back from now."""

    failures: int
    down_for_s: float | None
    troubled_for_s: float | None
    silent_for_s: float  # since the last success of any worker
    turn: str = ""  # to an ask: "go", "probe" (this worker's attempt probes) or "wait"
    wait_s: float = 0.0  # "wait": ask again after this long


class ClusterOutage:
    """The pool's outage record; plain methods (the actor calls them one at a time)."""

    def __init__(self, *, clock: Clock = time.monotonic, note: Callable[[str], None]) -> None:
        self.clock, self.note = clock, note
        self.last_success = clock()
        self.trouble_since: float | None = None
        self.failures = 0  # transient failures in a row, cluster wide
        self.down_since: float | None = None
        self.probes = 0  # probes let through in this outage
        self.next_probe_at: float | None = None  # None: the first ask's wait from then
        self.holder: str | None = None  # the worker whose attempt is the probe

    def report(self, worker: str, news: OutageNews) -> OutageView:
        now = self.clock()
        if news.succeeded:
            self._succeeded(now, now - news.succeeded_s_ago)
        if news.failed or news.troubled:
            self.trouble_since = now if self.trouble_since is None else self.trouble_since
        if news.failed:
            self._failed(news.failed, now)
        if news.released and self.holder == worker:
            self._free(now)
        turn, wait = self._turn(worker, now) if news.asking else ("", 0.0)
        return OutageView(
            self.failures,
            None if self.down_since is None else now - self.down_since,
            None if self.trouble_since is None else now - self.trouble_since,
            now - self.last_success,
            turn,
            wait,
        )

    def lost(self, worker: str) -> None:
        """A worker died: a probe it held is over."""
        if self.holder == worker:
            self._free(self.clock())

    def _succeeded(self, now: float, at: float) -> None:
        """A success that came `at` (a worker tells it up to HEARD_S later, more on a busy
        machine). One that came before the outage was declared is old news, disproved by
        the failures since: it ends nothing (ended by it, the outage was declared again at
        the next failures, and the workers sent full speed into it meanwhile)."""
        if self.down_since is not None and at < self.down_since:
            self.last_success = max(self.last_success, at)
            return
        self.last_success, self.failures, self.trouble_since = now, 0, None
        if self.down_since is not None:
            self.note(f"the API answers again after {now - self.down_since:,.0f} s: full speed")
        self.down_since, self.probes, self.holder, self.next_probe_at = None, 0, None, None

    def _failed(self, count: int, now: float) -> None:
        self.failures += count
        if self.down_since is None and self.failures >= FAILURES_FOR_OUTAGE:
            self.down_since, self.probes, self.holder, self.next_probe_at = now, 0, None, None
            self.note(
                f"the API failed {self.failures} attempts in a row: sending one probe at a "
                "time until it answers"
            )

    def _free(self, now: float) -> None:
        self.holder, self.next_probe_at = None, now + self._wait()

    def _wait(self) -> float:
        return PROBE_WAITS_S[min(self.probes, len(PROBE_WAITS_S) - 1)]

    def _turn(self, worker: str, now: float) -> tuple[str, float]:
        if self.down_since is None:
            return "go", 0.0
        if self.holder is not None and self.holder != worker:
            return "wait", RE_ASK_S  # its verdict will set the next probe's time
        if self.holder is None and self.next_probe_at is None:  # as locally: the first
            self.next_probe_at = now + self._wait()  # probe's wait runs from its ask
        if self.holder is None and self.next_probe_at is not None and now < self.next_probe_at:
            return "wait", self.next_probe_at - now
        if self.holder is None:
            self.holder, self.probes, self.next_probe_at = worker, self.probes + 1, math.inf
        return "probe", 0.0


class OutagePool(Protocol):
    """The pool as a worker's watch reaches it: in process (tests) or the actor's handle."""

    async def outage(self, worker: str, news: OutageNews) -> OutageView: ...


class LocalOutage:
    """A ClusterOutage in this process, behind the async face workers use."""

    def __init__(self, record: ClusterOutage) -> None:
        self.record = record

    async def outage(self, worker: str, news: OutageNews) -> OutageView:
        return self.record.report(worker, news)


class LeasedOutageWatch(OutageWatch):
    """A worker's OutageWatch whose record is the pool's (see the module's docstring); the
    fields of OutageWatch hold the cluster's record as last heard, with this worker's own
    news not yet told. Notes are the pool's (said once for the cluster)."""

    def __init__(
        self,
        pool: OutagePool,
        name: str,
        patience_s: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        super().__init__(patience_s, clock=clock, sleep=sleep, note=lambda _: None)
        self.pool, self.name = pool, name
        self._news = OutageNews()  # not yet told
        self._talking = asyncio.Lock()  # calls one at a time, in order
        self._queued = False  # a call to tell the news is on its way
        self._heard_at = -math.inf
        self._succeeded_at = -math.inf  # this worker's last success, as it came
        self._told: set[asyncio.Task[Any]] = set()

    @classmethod
    def instead_of(cls, watch: OutageWatch, pool: OutagePool, name: str) -> LeasedOutageWatch:
        """For a client's own watch: the same patience, clock and sleep."""
        return cls(pool, name, watch.patience_s, clock=watch._clock, sleep=watch._sleep)

    def succeeded(self) -> None:
        worth = self.failures > 0 or self.trouble_since is not None or self.down
        self.last_success, self.failures, self.trouble_since = self._clock(), 0, None
        self._succeeded_at = self.last_success
        self.down_since = None  # full speed here at once; the others hear it from the pool
        self._news = OutageNews(succeeded=True, released=self._news.released)
        if worth or self._queued or self._due():
            self._tell_soon()
        else:  # nothing to reset: told later, it could undo failures that came after it
            self._news = replace(self._news, succeeded=False)

    def troubled(self) -> None:
        worth = self.trouble_since is None
        super().troubled()
        self._news = replace(self._news, troubled=True)
        if worth or self._due():
            self._tell_soon()

    def failed(self) -> None:
        super().troubled()
        self.failures += 1  # the pool declares the outage
        self._news = replace(self._news, failed=self._news.failed + 1, troubled=True)
        self._tell_soon()

    async def admit(self) -> bool:
        """Before an attempt. While the cluster has failures in a row or is down: the pool's
        word first (True: this attempt is the cluster's probe; `release` after it)."""
        await self._patience()
        if not self.down and not self.failures:
            return False
        await self._lane.acquire()
        try:
            while self.down or self.failures:
                view = await self._call(asking=True)
                if view.turn == "probe":
                    return True  # the local lane stays held until `release`
                if view.turn == "go":
                    break
                await self._sleep(view.wait_s)
                await self._patience()
        except BaseException:  # cancelled or stopped: the lane back, at the pool too (an
            self.release(True)  # ask cut short may have won it; from a non-holder, a no-op)
            raise
        self._lane.release()
        return False

    def stale(self) -> bool:
        """As last heard, which may be old: failures in a row are reason to ask."""
        return self.down or self.failures > 0

    def release(self, held: bool) -> None:
        if held:
            self._news = replace(self._news, released=True)
            self._tell_soon()
            self._lane.release()

    async def flush(self) -> None:
        """Before the worker ends: every call on its way answered (a probe's release)."""
        await asyncio.gather(*self._told, return_exceptions=True)

    async def _patience(self) -> None:
        try:
            self.check_patience()
        except ApiUnavailable:  # as last heard: another worker may have succeeded since
            await self._call()
            self.check_patience()

    def _due(self) -> bool:
        return self._clock() - self._heard_at >= HEARD_S

    def _tell_soon(self) -> None:
        if self._queued:
            return
        self._queued = True
        task = asyncio.get_running_loop().create_task(self._tell())
        self._told.add(task)
        task.add_done_callback(self._told.discard)

    async def _tell(self) -> None:
        async with self._talking:
            self._queued = False
            if self._news:  # else an ask took it on its way
                await self._exchange(asking=False)

    async def _call(self, *, asking: bool = False) -> OutageView:
        async with self._talking:
            return await self._exchange(asking)

    async def _exchange(self, asking: bool) -> OutageView:
        ago = self._clock() - self._succeeded_at if self._news.succeeded else 0.0
        news, self._news = replace(self._news, asking=asking, succeeded_s_ago=ago), OutageNews()
        self._heard_at = self._clock()
        view = await self.pool.outage(self.name, news)
        self._hear(view)
        return view

    def _hear(self, view: OutageView) -> None:
        """The cluster's record, with what this worker has not told yet."""
        now, news = self._clock(), self._news
        self.failures = (0 if news.succeeded else view.failures) + news.failed
        back = {"down_for_s": view.down_for_s, "troubled_for_s": view.troubled_for_s}
        if news.succeeded:
            back = dict.fromkeys(back)
        self.down_since = None if back["down_for_s"] is None else now - back["down_for_s"]
        self.trouble_since = (
            None if back["troubled_for_s"] is None else now - back["troubled_for_s"]
        )
        if self.trouble_since is None and (news.failed or news.troubled):
            self.trouble_since = now
        self.last_success = now if news.succeeded else now - view.silent_for_s
