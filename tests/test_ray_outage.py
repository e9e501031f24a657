"""One outage for many workers (pipeline/ray/outage.py), in virtual time: the pool's record
in process behind the same async face a Ray actor's handle offers."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from pipeline.errors import ApiUnavailable
from pipeline.ray.outage import ClusterOutage, LeasedOutageWatch, LocalOutage
from pipeline.send.pressure import FAILURES_FOR_OUTAGE, OutageWatch
from tests.conftest import FakeTime, drive

TASKS = 8  # requests in flight, across every worker


Rows = Callable[[OutageWatch, float], Coroutine[Any, Any, None]]


def server(ft: FakeTime, down_from: float, down_until: float, log: dict[str, list[float]]) -> Rows:
    """Rows sent through a watch as the client does (admit, the attempt, the verdict,
    release, the retry's wait) to an API that answers 503 from `down_from` to `down_until`."""

    async def rows(watch: OutageWatch, until: float) -> None:
        while ft.now < until:
            probe = await watch.admit()
            sent = ft.now
            await ft.sleep(0.05)  # the attempt
            down = down_from <= sent < down_until
            if down:
                watch.failed()
            else:
                watch.succeeded()
            watch.release(probe)
            log["failed" if down else "ok"].append(sent)
            await ft.sleep(0.5 if down else 0.05)  # the retry's wait, or the next row

    return rows


def cluster(
    ft: FakeTime, count: int, patience_s: float = 600
) -> tuple[list[OutageWatch], ClusterOutage]:
    record = ClusterOutage(clock=ft.clock, note=lambda _: None)
    face = LocalOutage(record)
    watches: list[OutageWatch] = [
        LeasedOutageWatch(face, f"w{n}", patience_s, clock=ft.clock, sleep=ft.sleep)
        for n in range(count)
    ]
    return watches, record


def run(
    ft: FakeTime, watches: list[OutageWatch], until: float, log: dict[str, list[float]]
) -> None:
    start = ft.now
    rows = server(ft, start + 5, start + 25, log)  # a 20 s outage
    per = TASKS // len(watches)
    drive(ft, *(rows(watch, until) for watch in watches for _ in range(per)))


def test_workers_in_an_outage_fail_as_many_attempts_as_one_local_watch() -> None:
    local_ft = FakeTime()
    local: dict[str, list[float]] = {"failed": [], "ok": []}
    watch = OutageWatch(600, clock=local_ft.clock, sleep=local_ft.sleep, note=lambda _: None)
    run(local_ft, [watch], local_ft.now + 40, local)

    ft = FakeTime()
    spread: dict[str, list[float]] = {"failed": [], "ok": []}
    watches, record = cluster(ft, 4)
    run(ft, watches, ft.now + 40, spread)

    assert FAILURES_FOR_OUTAGE <= len(local["failed"]) <= 25  # the baseline: one watch
    assert abs(len(spread["failed"]) - len(local["failed"])) <= 2  # not 4 x the probes
    assert record.down_since is None and record.failures == 0  # over when the API was back
    back = ft.now - 15  # the outage ended at start + 25; the run at start + 40
    assert all(not w.down for w in watches)
    assert len([t for t in spread["ok"] if t >= back]) >= 0.9 * len(
        [t for t in local["ok"] if t >= local_ft.now - 15]
    )  # full speed again on every worker


def test_probes_go_one_at_a_time_across_the_cluster() -> None:
    ft = FakeTime()
    log: dict[str, list[float]] = {"failed": [], "ok": []}
    watches, _ = cluster(ft, 4)
    start = ft.now
    run(ft, watches, start + 40, log)
    probes = [t for t in log["failed"] if t >= start + 6]  # after the burst at its start
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert gaps and min(gaps) >= 1.0  # one probe in flight at a time, growing waits


def test_one_success_anywhere_ends_the_outage_for_every_worker(ft: FakeTime) -> None:
    first, second = cluster(ft, 2)[0]

    async def scenario() -> tuple[bool, bool]:
        for _ in range(FAILURES_FOR_OUTAGE):
            first.failed()
        await ft.sleep(0)  # told: the pool declares the outage
        second.failed()  # the second worker's attempt fails too: it hears of the outage
        await ft.sleep(0)
        held = await first.admit()  # the cluster's probe
        waiting = asyncio.ensure_future(second.admit())
        await ft.sleep(1.0)
        queued = not waiting.done()
        first.succeeded()  # the probe came back answered
        first.release(held)
        second_held = await waiting
        return queued and held, second_held

    queued, second_held = drive(ft, scenario())[0]
    assert queued  # the second worker waited for the first's probe
    assert not second_held and not second.down  # then went on at full speed, no lane


def test_patience_stops_every_worker_in_an_outage_without_end(ft: FakeTime) -> None:
    watches, _ = cluster(ft, 4, patience_s=30)
    log: dict[str, list[float]] = {"failed": [], "ok": []}
    start = ft.now
    rows = server(ft, start + 5, start + 3600, log)

    async def until_stopped(watch: OutageWatch) -> float:
        with pytest.raises(ApiUnavailable, match="has not answered successfully"):
            await rows(watch, start + 3600)
        return ft.now

    stopped = drive(ft, *(until_stopped(w) for w in watches for _ in range(2)))
    assert all(start + 35 <= t <= start + 35 + 4 for t in stopped)  # the patience, for all
    assert len(log["failed"]) <= TASKS + 15  # and one probe at a time until then


def test_a_success_elsewhere_keeps_a_worker_with_only_429s_from_stopping(ft: FakeTime) -> None:
    (refused, answered), _ = cluster(ft, 2, patience_s=30)

    async def scenario() -> None:
        refused.troubled()
        for _ in range(120):  # two minutes: the other worker's rows keep being answered
            answered.succeeded()
            await ft.sleep(1.0)
        await refused.admit()  # its view was stale: it asks the pool before stopping

    drive(ft, scenario())


def test_a_success_told_late_but_older_than_the_outage_ends_nothing(ft: FakeTime) -> None:
    """A worker tells its news up to HEARD_S late: a success from before the outage was
    declared must not end it (the workers would send full speed into the outage, and the
    next failures declare it again); a success after the declaration does."""
    from pipeline.ray.outage import OutageNews

    notes: list[str] = []
    record = ClusterOutage(clock=ft.clock, note=notes.append)
    record.report("w1", OutageNews(failed=FAILURES_FOR_OUTAGE, troubled=True))
    ft.now += 0.1
    view = record.report("w0", OutageNews(succeeded=True, succeeded_s_ago=0.3))
    assert view.down_for_s == pytest.approx(0.1)
    assert record.failures == FAILURES_FOR_OUTAGE and len(notes) == 1  # still down, said once
    ft.now += 0.1
    view = record.report("w0", OutageNews(succeeded=True, succeeded_s_ago=0.05))
    assert view.down_for_s is None and record.failures == 0
    assert "answers again" in notes[-1]


def test_a_worker_tells_how_long_ago_its_success_came(ft: FakeTime) -> None:
    told: list[Any] = []

    class Pool:
        async def outage(self, worker: str, news: Any) -> Any:
            told.append(news)
            return ClusterOutage(clock=ft.clock, note=lambda _: None).report(worker, news)

    watch = LeasedOutageWatch(Pool(), "w0", 600, clock=ft.clock, sleep=ft.sleep)

    async def scenario() -> None:
        watch.failed()  # failures known: a success is worth telling
        await ft.sleep(0)
        watch.succeeded()
        ft.now += 0.2  # the telling waits (a call on its way, a busy loop)
        await watch._call()

    drive(ft, scenario())
    assert told[-1].succeeded and told[-1].succeeded_s_ago == pytest.approx(0.2)
