"""One rate limit, cooldown and budget for many workers (pipeline/ray/lease.py), in virtual
time: the pool in process behind the same async face a Ray actor's handle offers."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from pipeline.ray.lease import CapacityPool, InFlight, LeasedLimiter, Leases, LocalPool
from pipeline.send.limits import Limiter
from tests.conftest import FakeTime, drive


def workers(ft: FakeTime, pool: CapacityPool, count: int, rpm: float) -> list[LeasedLimiter]:
    face = LocalPool(pool)
    return [
        LeasedLimiter(face, {"requests": rpm}, workers=count, clock=ft.clock, sleep=ft.sleep)
        for _ in range(count)
    ]


async def send(ft: FakeTime, limiter: LeasedLimiter, until: float, sent: list[float]) -> None:
    while ft.now < until:
        ticket = await limiter.acquire()
        if ft.now >= until:
            limiter.finish(ticket)
            break
        sent.append(ft.now)
        limiter.finish(ticket)


@pytest.mark.parametrize("count", [1, 2, 4])
def test_workers_together_send_at_the_told_rate_not_n_times_it(ft: FakeTime, count: int) -> None:
    pool = CapacityPool({"requests": 600}, clock=ft.clock)
    sent: list[float] = []
    start = ft.now
    drive(ft, *(send(ft, w, start + 60, sent) for w in workers(ft, pool, count, 600)))
    assert 600 <= len(sent) <= 600 + 10  # a minute at 600/min, plus the pool's burst


def test_leases_come_in_chunks_not_one_call_a_request(ft: FakeTime) -> None:
    pool = CapacityPool({"requests": 1200}, clock=ft.clock)
    calls = []
    original = pool.lease

    def counted(amounts: dict[str, float]) -> object:
        calls.append(amounts)
        return original(amounts)

    pool.lease = counted  # type: ignore[method-assign]
    sent: list[float] = []
    (limiter,) = workers(ft, pool, 1, 1200)
    drive(ft, send(ft, limiter, ft.now + 10, sent))
    assert len(sent) >= 200 and len(calls) <= len(sent) / 4


def test_one_workers_429_pauses_every_worker(ft: FakeTime) -> None:
    pool = CapacityPool({"requests": 6000}, clock=ft.clock)
    first, second = workers(ft, pool, 2, 6000)
    sent: list[float] = []

    async def scenario() -> None:
        await first.acquire()
        first.rate_limited(5.0)  # explained: a bucket reported empty
        await ft.sleep(0)  # the pool hears of it
        for _ in range(30):  # more than the lease it holds: the next lease says "wait"
            await second.acquire()
            sent.append(ft.now)

    start = ft.now
    drive(ft, scenario())
    assert sent[-1] >= start + 5.0


def test_the_pool_adopts_a_lower_limit_a_worker_learned(ft: FakeTime) -> None:
    pool = CapacityPool({"requests": 6000}, clock=ft.clock)
    (limiter,) = workers(ft, pool, 1, 6000)

    async def scenario() -> None:
        limiter.learn({"anthropic-ratelimit-requests-limit": "60"})
        await ft.sleep(0)

    drive(ft, scenario())
    assert pool.limits["requests"] == 60.0


def test_the_budget_counts_what_every_worker_has_in_flight() -> None:
    pool = CapacityPool({}, max_cost_usd="1.00")
    assert pool.reserve("0.40").reserved and pool.reserve("0.40").reserved
    assert not pool.reserve("0.40").reserved  # 0.80 in flight cluster wide: 1.20 would cross
    pool.settle("0.40", "0.10")
    assert pool.reserve("0.40").reserved  # spent 0.10 + 0.80 in flight
    pool.settle("0.40", None)  # unknown cost: counted at its worst
    assert pool.spent == Decimal("0.50") and not pool.reserve("0.30").reserved


@pytest.mark.parametrize(
    ("spent", "in_flight", "worst", "answer"),
    [
        ("0", [], "0.40", "reserved"),
        ("0.70", [], "0.40", "refused"),  # nothing in flight: nothing will make room
        ("0", ["0.40", "0.40"], "0.40", "wait"),  # a settle may make room
        ("0", ["0.40"], "0.60", "reserved"),  # exactly the limit fits
    ],
)
def test_the_pools_budget_answers(
    spent: str, in_flight: list[str], worst: str, answer: str
) -> None:
    pool = CapacityPool({}, max_cost_usd="1.00", spent_before_usd=spent)
    for held in in_flight:
        assert pool.reserve(held, "other").reserved
    got = pool.reserve(worst, "me")
    assert answer == ("reserved" if got.reserved else "refused" if got.refusal else "wait")
    if answer == "refused":
        assert got.refusal is not None and got.refusal.startswith("stopped at the budget")
    if answer == "wait":
        assert got.settles == pool.budget.settles  # the count a waiter waits to pass


def test_a_reservation_that_does_not_fit_waits_for_a_settle_without_polling() -> None:
    from pipeline.errors import BudgetReached
    from pipeline.ray.budget import ClusterBudget

    pool = CapacityPool({}, max_cost_usd="1.00")
    face = LocalPool(pool)
    first, second = ClusterBudget(face, "a"), ClusterBudget(face, "b")

    async def scenario() -> list[str]:
        said: list[str] = []
        await first.reserve(Decimal("0.60"))
        waiting = [asyncio.ensure_future(second.reserve(Decimal("0.60"))) for _ in range(3)]
        for _ in range(20):
            await asyncio.sleep(0)  # no time passes: nothing is polled
        said.append(f"waiting {sum(not w.done() for w in waiting)} on {len(second._waits)}")
        first.settle(Decimal("0.60"), 0.10)  # 0.10 spent, nothing in flight
        await asyncio.sleep(0)
        done, _ = await asyncio.wait(waiting, timeout=1, return_when=asyncio.FIRST_COMPLETED)
        said.append(f"reserved {sum(not w.exception() for w in done)}")
        await asyncio.sleep(0.01)
        refused = [w for w in waiting if w.done() and isinstance(w.exception(), BudgetReached)]
        said.append(f"refused {len(refused)}, waiting {sum(not w.done() for w in waiting)}")
        for w in waiting:
            w.cancel()
        return said

    said = asyncio.run(scenario())
    # one fits (0.10 + 0.60); the other two wait on it, not on time, and are not refused
    # while it is in flight
    # (three rows waiting make one wait on the pool)
    assert said == ["waiting 3 on 1", "reserved 1", "refused 0, waiting 2"]
    assert pool.reserved == Decimal("0.60") and pool.spent == Decimal("0.10")


def test_unused_capacity_goes_back_to_the_pool(ft: FakeTime) -> None:
    pool = CapacityPool({"requests": 600}, clock=ft.clock)
    (limiter,) = workers(ft, pool, 1, 600)

    async def scenario() -> None:
        ticket = await limiter.acquire()
        limiter.finish(ticket)
        held = limiter.leases.held["requests"]
        before = pool.buckets["requests"].level()
        await limiter.release_unused()
        assert pool.buckets["requests"].level() == pytest.approx(before + held)

    drive(ft, scenario())


def gateway(ft: FakeTime, cap: int, served: list[float], refused: list[float]) -> Any:
    """A server that lets `cap` requests be in flight across every worker, 100 ms each,
    and answers more with a 429 no bucket explains (a gateway's cap)."""
    in_flight = [0]

    async def call(limiter: LeasedLimiter, until: float) -> None:
        while ft.now < until:
            ticket = await limiter.acquire()
            if in_flight[0] >= cap:
                limiter.rate_limited(0.0, ticket, explained=False)
                refused.append(ft.now)
                limiter.finish(ticket)
                await ft.sleep(0.5)  # the client's backoff
                continue
            in_flight[0] += 1
            await ft.sleep(0.1)
            in_flight[0] -= 1
            served.append(ft.now)
            limiter.answered(ticket)
            limiter.finish(ticket, 10, 1)

    return call


@pytest.mark.parametrize(("cap", "count"), [(12, 2), (30, 4)])
def test_a_cap_on_requests_in_flight_is_learned_once_for_every_worker(
    ft: FakeTime, cap: int, count: int
) -> None:
    pool = CapacityPool({}, concurrency=64, clock=ft.clock)
    face = LocalPool(pool)
    limiters = [
        LeasedLimiter(
            face, {}, workers=count, concurrency=64, name=f"w{n}", clock=ft.clock, sleep=ft.sleep
        )
        for n in range(count)
    ]
    served: list[float] = []
    refused: list[float] = []
    lowest = [64]
    original = pool.sync

    def watched(worker: str, news: Any) -> Any:
        share = original(worker, news)
        lowest[0] = min(lowest[0], pool.gate.limit if pool.gate else 64)
        return share

    pool.sync = watched  # type: ignore[method-assign]
    call = gateway(ft, cap, served, refused)
    start = ft.now

    async def scenario() -> None:
        for limiter in limiters:
            await limiter.join()
        tasks = [call(limiter, start + 90) for limiter in limiters for _ in range(32)]
        await asyncio.gather(*tasks)

    drive(ft, scenario())
    late = [t for t in served if t >= start + 60]
    late_refused = [t for t in refused if t >= start + 60]
    assert pool.gate is not None and cap - 3 <= pool.gate.limit <= cap + 1  # learned once
    assert sum(limiter.gate.limit for limiter in limiters if limiter.gate) <= pool.gate.limit + 1
    assert lowest[0] >= cap // 2  # no collapse on the first 429s (a stale view of the others)
    assert len(late) / 30 >= 0.75 * cap / 0.1  # the cap used: >= 75% of its answers a second
    assert len(late_refused) <= 0.02 * len(late)  # probes only, no 429 storm


def test_a_worker_lowered_by_529s_steps_back_up_in_quiet_spells(ft: FakeTime) -> None:
    pool = CapacityPool({}, concurrency=32, clock=ft.clock)
    worker = LeasedLimiter(
        LocalPool(pool), {}, workers=1, concurrency=32, name="w", clock=ft.clock, sleep=ft.sleep
    )
    seen: dict[str, int] = {}

    async def scenario() -> None:
        await worker.join()
        for _ in range(200):  # slow start grows the cluster (and this worker) to 32
            ticket = await worker.acquire()
            await ft.sleep(0.05)
            worker.answered(ticket)
            worker.finish(ticket)
        for _ in range(2):  # the server is busy: 529s in a row step this worker down
            ticket = await worker.acquire()
            worker.overloaded()
            worker.finish(ticket)
        seen["lowered"] = worker.gate.limit if worker.gate else 0
        for _ in range(600):  # two minutes of answers
            ticket = await worker.acquire()
            await ft.sleep(0.2)
            worker.answered(ticket)
            worker.finish(ticket)
        seen["after"] = worker.gate.limit if worker.gate else 0

    drive(ft, scenario())
    assert seen["lowered"] < 32 and seen["after"] == 32


def test_a_lost_worker_gives_back_its_share_and_its_reservations() -> None:
    pool = CapacityPool({}, max_cost_usd="1.00", concurrency=16)
    for name in "abcd":
        pool.sync(name, InFlight())
    assert pool.reserve("0.30", "d").reserved and pool.reserve("0.30", "a").reserved
    pool.lost("d")  # killed: nobody will settle its reservation, nor send 'leaving'
    for name in "abc":  # each hears its new share (a may send at its old one until then)
        pool.sync(name, InFlight())
    shares = [pool.sync(name, InFlight()).limit for name in "abc"]
    assert sum(shares) == pool.gate.limit if pool.gate else False  # d's share is theirs
    assert pool.reserved == Decimal("0.30")  # a's only; d's counts as spent, at its worst
    assert pool.spent == Decimal("0.30") and not pool.reserve("0.50", "b").reserved


def test_shares_are_of_the_planned_workers_from_the_first_request() -> None:
    pool = CapacityPool({}, concurrency=4, workers=4)
    shares: dict[str, int] = {}
    for name in "abcd":  # they join one by one; the first must not take the whole limit
        shares[name] = pool.sync(name, InFlight()).limit
        assert sum(shares.values()) <= 4
    assert shares == dict.fromkeys("abcd", 1)
    pool.sync("a", InFlight(leaving=True))  # done: its share goes to the others
    assert sum(pool.sync(name, InFlight()).limit for name in "bcd") == 4


def test_shares_never_add_up_to_more_than_a_lowered_limit() -> None:
    pool = CapacityPool({}, concurrency=8, workers=4)
    for name in "abcd":
        pool.sync(name, InFlight())
    assert pool.gate is not None and sum(pool.shares.values()) == 8
    pool.gate.set_limit(3)  # a cap learned: a's sync hears of it first, the others later
    for name in "abcd":
        pool.sync(name, InFlight())
        assert sum(pool.shares.values()) <= 8  # the stale shares of the others count
    for _ in range(2):  # a worker's old share counts until its next sync says it has heard
        for name in "abcd":
            pool.sync(name, InFlight())
    assert sum(pool.shares.values()) == 3 and min(pool.shares.values()) == 0


def test_a_worker_whose_share_shrank_keeps_its_requests_in_flight_counted() -> None:
    """A worker done: its share goes to the others (one gets 2). A late worker joins in the
    done one's place, before it: the one with 2 is lowered to 1 while it still has 2 in
    flight, which must count until it says they ended (5 at the server, before)."""
    pool = CapacityPool({}, concurrency=4, workers=4)
    for name in "abc":
        pool.sync(name, InFlight())
    pool.sync("a", InFlight(leaving=True))
    doubled = next(n for n in "bc" if pool.sync(n, InFlight(active=1, answered=1)).limit == 2)
    single = "c" if doubled == "b" else "b"
    assert pool.sync("d", InFlight()).limit == 1  # 4 - 2 - 1
    assert pool.sync(doubled, InFlight(active=2, answered=1)).limit == 1  # d is before it
    in_flight = {single: 1, doubled: 2, "d": pool.sync("d", InFlight(active=1)).limit}
    assert sum(in_flight.values()) <= 4, in_flight
    pool.sync(doubled, InFlight(active=1, answered=1))  # one of its two ended
    assert pool.sync("d", InFlight(active=1, answered=1)).limit == 2  # now it is free


def test_a_worker_with_no_share_asks_again_and_gets_one_when_another_leaves(
    ft: FakeTime,
) -> None:
    pool = CapacityPool({}, concurrency=2, workers=3, clock=ft.clock)
    face = LocalPool(pool)
    a, b, c = (
        LeasedLimiter(face, {}, workers=3, concurrency=2, name=n, clock=ft.clock, sleep=ft.sleep)
        for n in "abc"
    )
    sent_by_c: list[float] = []
    left_at: list[float] = []

    async def scenario() -> None:
        for limiter in (a, b, c):
            await limiter.join()
        assert c.gate is not None and c.gate.limit == 0  # 2 in flight for 3 workers
        await ft.sleep(1.0)
        await a.release_unused()  # a is done
        left_at.append(ft.now)
        ticket = await c.acquire()  # c asks the pool again by itself: a's share is free
        sent_by_c.append(ft.now)
        c.finish(ticket)
        await b.release_unused()
        await c.release_unused()

    drive(ft, scenario())
    assert sent_by_c[0] - left_at[0] <= 2 * 0.1  # within a sync or two


def held_gateway(
    ft: FakeTime, cap: int, peak: list[int], served: list[float], refused: list[float]
) -> Any:
    """As `gateway`, counting what the server sees in flight (refused attempts included)
    and its peak."""
    seen = [0, 0]  # in flight at the server, of which admitted

    async def call(limiter: LeasedLimiter, until: float) -> None:
        while ft.now < until:
            ticket = await limiter.acquire()
            seen[0] += 1
            peak[0] = max(peak[0], seen[0])
            if seen[1] >= cap:
                await ft.sleep(0.005)  # a 429 comes back at once, but not in no time
                seen[0] -= 1
                limiter.rate_limited(0.0, ticket, explained=False)
                refused.append(ft.now)
                limiter.finish(ticket)
                await ft.sleep(0.5)
                continue
            seen[1] += 1
            await ft.sleep(0.1)
            seen[0], seen[1] = seen[0] - 1, seen[1] - 1
            served.append(ft.now)
            limiter.answered(ticket)
            limiter.finish(ticket, 10, 1)

    return call


@pytest.mark.parametrize(
    ("concurrency", "count", "cap"), [(4, 2, 100), (4, 4, 100), (32, 8, 5), (32, 2, 5)]
)
def test_the_cluster_never_has_more_in_flight_than_its_concurrency_or_a_learned_cap(
    ft: FakeTime, concurrency: int, count: int, cap: int
) -> None:
    pool = CapacityPool({}, concurrency=concurrency, workers=count, clock=ft.clock)
    face = LocalPool(pool)
    limiters = [
        LeasedLimiter(
            face,
            {},
            workers=count,
            concurrency=concurrency,
            name=f"w{n}",
            clock=ft.clock,
            sleep=ft.sleep,
        )
        for n in range(count)
    ]
    peak, served, refused = [0], list[float](), list[float]()
    call = held_gateway(ft, cap, peak, served, refused)
    start = ft.now

    async def scenario() -> None:
        for limiter in limiters:
            await limiter.join()
        await asyncio.gather(*(call(w, start + 60) for w in limiters for _ in range(concurrency)))

    drive(ft, scenario())
    if cap >= concurrency:
        assert peak[0] == concurrency  # used, never passed
        assert not refused
    else:  # the cap is learned once for the cluster: few 429s, the cap kept busy
        assert len(refused) <= 0.03 * (len(served) + len(refused)), (len(refused), len(served))
        assert len(served) / 60 >= 0.75 * cap / 0.1


def test_a_leased_limiter_is_a_limiter_with_other_parts_not_other_methods(ft: FakeTime) -> None:
    overridden = {
        name for name in vars(LeasedLimiter) if name in vars(Limiter) and name != "__init__"
    } - {"__doc__", "__module__", "__qualname__", "__dict__", "__weakref__"}
    assert overridden == set()
    pool = CapacityPool({"requests": 600}, concurrency=8, clock=ft.clock)
    worker = LeasedLimiter(
        LocalPool(pool), {"requests": 600}, workers=2, concurrency=8, clock=ft.clock,
        sleep=ft.sleep,
    )  # fmt: skip
    assert isinstance(worker.capacity, Leases) and worker.capacity is worker.leases
    assert worker.control.cluster is worker.leases and worker.buckets == {}
