"""Token buckets and the shared cooldown, on a fake clock: nothing really waits.

`FakeTime` (tests/conftest.py) is a tiny virtual-time scheduler: times recorded by the
tests are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from pipeline.send.buckets import BURST_S, TokenBucket
from pipeline.send.limits import Limiter
from tests.conftest import FakeTime, drive


async def timed_acquires(ft: FakeTime, acquire: Callable[[], Awaitable[None]], n: int):
    """Acquire n times one after another; the virtual times (from start) they got through."""
    start, times = ft.now, []
    for _ in range(n):
        await acquire()
        times.append(round(ft.now - start, 9))
    return times


# --- TokenBucket ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "capacity", "n", "expected"),
    [
        # capacity immediate, then exactly 1/rate apart
        (10.0, 1.0, 5, [0, 0.1, 0.2, 0.3, 0.4]),
        (10.0, 3.0, 6, [0, 0, 0, 0.1, 0.2, 0.3]),
        (2.0, 2.0, 5, [0, 0, 0.5, 1.0, 1.5]),
        (0.5, 1.0, 3, [0, 2.0, 4.0]),
        (100.0, 10.0, 13, [0] * 10 + [0.01, 0.02, 0.03]),
    ],
)
def test_bucket_burst_then_exact_spacing(ft: FakeTime, rate, capacity, n, expected) -> None:
    bucket = TokenBucket(rate, capacity, clock=ft.clock, sleep=ft.sleep)
    [times] = drive(ft, timed_acquires(ft, bucket.acquire, n))
    assert times == pytest.approx(expected)


@pytest.mark.parametrize(
    ("per_minute", "rate", "burst"),
    [
        (1, 1 / 60, 1),  # one is the least a bucket can hold
        (30, 0.5, 1),
        (60, 1.0, 1),  # 60 RPM may be enforced as 1 a second: so are we
        (600, 10.0, 1),
        (3000, 50.0, 5),
        (6000, 100.0, 10),
        (60000, 1000.0, 100),
        (400_000, 400_000 / 60, 400_000 / 600),  # input tokens a minute
    ],
)
def test_per_minute_never_allows_a_minutes_worth_at_once(
    ft: FakeTime, per_minute, rate, burst
) -> None:
    bucket = TokenBucket.per_minute(per_minute, clock=ft.clock, sleep=ft.sleep)
    assert bucket.rate == pytest.approx(rate)
    assert bucket.capacity == pytest.approx(burst)
    assert bucket.capacity == pytest.approx(max(1.0, rate * BURST_S))
    if per_minute > 1:
        assert bucket.capacity < per_minute
    # asked for all at once, only the burst goes through; the rest is paced at the rate
    n = min(int(per_minute), int(burst) + 20)
    [times] = drive(ft, timed_acquires(ft, bucket.acquire, n))
    immediate = sum(1 for t in times if t == 0)
    assert immediate == int(burst)
    assert times[-1] == pytest.approx((n - burst) / rate)


def test_per_minute_600_spaces_requests_a_tenth_of_a_second_apart(ft: FakeTime) -> None:
    bucket = TokenBucket.per_minute(600, clock=ft.clock, sleep=ft.sleep)
    [times] = drive(ft, timed_acquires(ft, bucket.acquire, 11))
    assert times == pytest.approx([round(0.1 * i, 9) for i in range(11)])


def test_concurrent_callers_queue_in_arrival_order(ft: FakeTime) -> None:
    bucket = TokenBucket(10.0, 1.0, clock=ft.clock, sleep=ft.sleep)
    start, got = ft.now, []

    async def caller(name: str) -> None:
        await bucket.acquire()
        got.append((name, round(ft.now - start, 9)))

    drive(ft, *(caller(c) for c in "abcde"))
    assert got == [("a", 0), ("b", 0.1), ("c", 0.2), ("d", 0.3), ("e", 0.4)]
    # each sleeps once, exactly: no polling
    assert ft.slept == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_bucket_refills_continuously_up_to_capacity(ft: FakeTime) -> None:
    bucket = TokenBucket(10.0, 5.0, clock=ft.clock, sleep=ft.sleep)

    async def scenario() -> list[float]:
        await bucket.acquire(5)
        levels = [bucket.level()]
        ft.now += 0.25
        levels.append(bucket.level())
        ft.now += 100  # idle for long: never above capacity
        levels.append(bucket.level())
        return levels

    [levels] = drive(ft, scenario())
    assert levels == pytest.approx([0.0, 2.5, 5.0])


@pytest.mark.parametrize(
    ("rate", "capacity", "amount", "wait"),
    [
        (10.0, 5.0, 20.0, 1.5),  # more than the bucket holds: goes into debt
        (1.0, 1.0, 4.0, 3.0),
        (100.0, 10.0, 10.0, 0.0),  # exactly the capacity: immediate
        (100.0, 10.0, 1000.0, 9.9),  # a huge request (e.g. estimated output tokens)
    ],
)
def test_amount_above_capacity_goes_into_debt(ft: FakeTime, rate, capacity, amount, wait) -> None:
    bucket = TokenBucket(rate, capacity, clock=ft.clock, sleep=ft.sleep)

    async def scenario() -> list[float]:
        start = ft.now
        await bucket.acquire(amount)
        first = ft.now - start
        await bucket.acquire(1)  # the next caller waits for the debt to be repaid too
        return [first, ft.now - start]

    [(first, second)] = drive(ft, scenario())
    assert first == pytest.approx(wait)
    assert second == pytest.approx(wait + 1 / rate)


def test_give_back_returns_unused_tokens(ft: FakeTime) -> None:
    bucket = TokenBucket(10.0, 5.0, clock=ft.clock, sleep=ft.sleep)

    async def scenario() -> list[float]:
        await bucket.acquire(5)
        bucket.give_back(3)
        after = bucket.level()
        bucket.give_back(100)  # never above capacity
        return [after, bucket.level()]

    [levels] = drive(ft, scenario())
    assert levels == pytest.approx([3.0, 5.0])


def test_give_back_shortens_the_next_wait(ft: FakeTime) -> None:
    bucket = TokenBucket(10.0, 1.0, clock=ft.clock, sleep=ft.sleep)

    async def scenario() -> float:
        await bucket.acquire(1)
        bucket.give_back(1)  # e.g. the request was never sent
        start = ft.now
        await bucket.acquire(1)
        return ft.now - start

    assert drive(ft, scenario()) == [0.0]


def test_cancelled_wait_gives_its_tokens_back(ft: FakeTime) -> None:
    bucket = TokenBucket(10.0, 1.0, clock=ft.clock, sleep=ft.sleep)

    async def scenario() -> tuple[float, float]:
        await bucket.acquire()  # the burst
        waiter = asyncio.ensure_future(bucket.acquire())  # in debt: waits 0.1 s
        await asyncio.sleep(0)
        assert bucket.level() == pytest.approx(-1.0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        level_after_cancel = bucket.level()
        start = ft.now
        await bucket.acquire()  # had the tokens been lost, this would wait 0.2 s
        return level_after_cancel, ft.now - start

    [(level, waited)] = drive(ft, scenario())
    assert level == pytest.approx(0.0)
    assert waited == pytest.approx(0.1)


def test_cancelling_one_waiter_does_not_starve_the_others(ft: FakeTime) -> None:
    bucket = TokenBucket(10.0, 1.0, clock=ft.clock, sleep=ft.sleep)
    start, got = ft.now, []

    async def caller(name: str) -> None:
        await bucket.acquire()
        got.append((name, round(ft.now - start, 9)))

    async def scenario() -> None:
        tasks = [asyncio.ensure_future(caller(c)) for c in "abc"]
        await asyncio.sleep(0)
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await caller("d")  # arrives after the cancel: reuses b's slot

    drive(ft, scenario())
    assert got == [("a", 0), ("c", 0.2), ("d", 0.2)]


@pytest.mark.parametrize(("rate", "capacity"), [(0, 1), (-1, 1), (1, 0), (1, -5)])
def test_bucket_rejects_non_positive_settings(rate, capacity) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, capacity)


# --- Limiter ---------------------------------------------------------------------------


def test_pacer_without_rpm_never_waits(ft: FakeTime) -> None:
    pacer = Limiter(None, clock=ft.clock, sleep=ft.sleep)
    [times] = drive(ft, timed_acquires(ft, pacer.acquire, 100))
    assert times == [0] * 100
    assert pacer.buckets.get("requests") is None


def test_pacer_spaces_requests_by_rpm(ft: FakeTime) -> None:
    pacer = Limiter(600, clock=ft.clock, sleep=ft.sleep)
    [times] = drive(ft, timed_acquires(ft, pacer.acquire, 4))
    assert times == pytest.approx([0, 0.1, 0.2, 0.3])


@pytest.mark.parametrize(("cool", "expected"), [(5.0, 5.0), (0.25, 0.25), (0.0, 0.0), (-3, 0.0)])
def test_cool_down_holds_acquire_until_the_time(ft: FakeTime, cool, expected) -> None:
    pacer = Limiter(None, clock=ft.clock, sleep=ft.sleep)
    start = ft.now
    pacer.cool_down(cool)
    [times] = drive(ft, timed_acquires(ft, pacer.acquire, 3))
    assert times == pytest.approx([expected] * 3)
    assert ft.now - start == pytest.approx(expected)


def test_cool_down_holds_every_sender_not_just_the_one_told(ft: FakeTime) -> None:
    pacer = Limiter(None, clock=ft.clock, sleep=ft.sleep)
    start, got = ft.now, []

    async def sender(name: str) -> None:
        await pacer.acquire()
        got.append((name, ft.now - start))

    pacer.cool_down(2.0)
    drive(ft, *(sender(c) for c in "abc"))
    assert got == [("a", 2.0), ("b", 2.0), ("c", 2.0)]


@pytest.mark.parametrize(
    ("first", "second_at", "second", "released", "cooldowns"),
    [
        (5.0, 3.0, 5.0, 8.0, 2),  # a later 429 during the wait extends it
        (5.0, 1.0, 10.0, 11.0, 2),
        (5.0, 1.0, 2.0, 5.0, 1),  # an earlier end does not shorten it
        (5.0, 4.0, 1.0, 5.0, 1),  # ending exactly at the same time: no change
        (5.0, 0.0, 5.0, 5.0, 1),
    ],
)
def test_later_cool_down_extends_earlier_does_not_shorten(
    ft: FakeTime, first, second_at, second, released, cooldowns
) -> None:
    pacer = Limiter(None, clock=ft.clock, sleep=ft.sleep)
    start = ft.now
    pacer.cool_down(first)

    async def sender() -> float:
        await pacer.acquire()
        return ft.now - start

    result, _ = drive(ft, sender(), ft.at(second_at, lambda: pacer.cool_down(second)))
    assert result == pytest.approx(released)
    assert pacer.cooldowns == cooldowns


def test_cooldowns_counts_only_cooldowns_that_moved_the_time(ft: FakeTime) -> None:
    pacer = Limiter(None, clock=ft.clock, sleep=ft.sleep)
    assert pacer.cooldowns == 0
    pacer.cool_down(5)
    pacer.cool_down(3)
    pacer.cool_down(5)
    assert pacer.cooldowns == 1
    pacer.cool_down(6)
    assert pacer.cooldowns == 2
    ft.now += 100  # long after: a new cooldown counts
    pacer.cool_down(1)
    assert pacer.cooldowns == 3


def test_after_a_cool_down_senders_resume_spaced_by_the_rpm(ft: FakeTime) -> None:
    # After a 429, the workers that were held must not all fire at the same instant: the
    # request bucket still spaces them (600/min -> 0.1 s apart), or the burst that follows
    # a cooldown trips the limit again.
    pacer = Limiter(600, clock=ft.clock, sleep=ft.sleep)
    start, sent = ft.now, []

    async def sender() -> None:
        await pacer.acquire()
        sent.append(round(ft.now - start, 9))

    pacer.cool_down(5.0)
    drive(ft, *(sender() for _ in range(5)))
    assert sent == pytest.approx([5.0, 5.1, 5.2, 5.3, 5.4])
