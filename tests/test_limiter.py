"""The Limiter: several budgets at once, learned limits, one cooldown, AIMD. Virtual time."""

from __future__ import annotations

import ast
import asyncio
import itertools
from pathlib import Path

import pytest

from pipeline.send.limits import Gate, Limiter
from tests.conftest import FakeTime, drive


def limiter(ft: FakeTime, *args: float | None, concurrency: int | None = None) -> Limiter:
    return Limiter(*args, concurrency=concurrency, clock=ft.clock, sleep=ft.sleep)


async def send_times(
    ft: FakeTime,
    lim: Limiter,
    n: int,
    inp: int = 0,
    out: int = 0,
    used: tuple[int, int] | None = None,
) -> list[float]:
    start, times = ft.now, []
    for _ in range(n):
        ticket = await lim.acquire(inp, out)
        times.append(round(ft.now - start, 6))
        lim.finish(ticket, *(used or (None, None)))
    return times


def test_the_tightest_budget_sets_the_pace(ft):
    # 6,000 requests/min would allow 100/s; 60,000 input tokens/min at 1,000 a request, 1/s
    lim = limiter(ft, 6000, 60_000)
    [times] = drive(ft, send_times(ft, lim, 4, inp=1000, used=(1000, 0)))
    assert times == [0, 1.0, 2.0, 3.0]


def test_unused_output_reservation_is_given_back(ft):
    # 600 output tokens/min = 10 a second. Each request reserves max_tokens = 100 and
    # holds it while in flight (0.5 s); one that used only 10 returns the other 90.
    def run(used: tuple[int, int]) -> float:
        time = FakeTime()
        lim = limiter(time, None, None, 600)

        async def worker() -> None:
            for _ in range(5):
                ticket = await lim.acquire(0, 100)
                await time.sleep(0.5)
                lim.finish(ticket, *used)

        drive(time, *(worker() for _ in range(4)))
        return time.now - 1000.0

    kept, returned = run((0, 100)), run((0, 10))
    assert kept > 150  # 20 requests x 100 tokens / 10 a second, less the first burst
    # the first round waits for every reservation (as the API's own bucket would); later
    # requests wait only for what the earlier ones used
    assert returned < kept / 2


def test_cache_reads_do_not_count_against_input_tokens(ft):
    lim = limiter(ft, None, 6000)  # 100 input tokens a second
    ticket = drive(ft, lim.acquire(500, 0))[0]
    lim.finish(ticket, 50, 0)  # 450 of the 500 were cache reads: only 50 counted
    assert lim.buckets["input_tokens"].level() > -1  # the 450 came back


@pytest.mark.parametrize(
    ("configured", "headers", "expected"),
    [
        (None, {"anthropic-ratelimit-requests-limit": "3000"}, 3000),
        (5000, {"anthropic-ratelimit-requests-limit": "3000"}, 3000),  # tightened
        (1000, {"anthropic-ratelimit-requests-limit": "3000"}, 1000),  # ours is lower: kept
        (None, {"x-ratelimit-limit-requests": "600"}, 600),  # the gateway's header
        (None, {"anthropic-ratelimit-requests-limit": "garbage"}, None),
        (None, {"anthropic-ratelimit-requests-limit": "0"}, None),
        (None, {}, None),
    ],
)
def test_request_limit_learned_from_headers(ft, configured, headers, expected):
    lim = limiter(ft, configured)
    lim.learn(headers)
    assert lim.limits.get("requests") == expected
    if expected is not None:
        assert lim.buckets["requests"].rate == pytest.approx(expected / 60)


def test_token_limits_learned_and_anthropic_combined_only_as_a_fallback(ft):
    lim = limiter(ft)
    lim.learn(
        {
            "anthropic-ratelimit-input-tokens-limit": "400000",
            "anthropic-ratelimit-output-tokens-limit": "80000",
            "anthropic-ratelimit-tokens-limit": "80000",
        }
    )
    assert lim.limits == {"input_tokens": 400000, "output_tokens": 80000}
    other = limiter(ft)
    other.learn({"anthropic-ratelimit-tokens-limit": "90000"})
    assert other.limits == {"tokens": 90000}
    gateway = limiter(ft)
    gateway.learn({"x-ratelimit-limit-tokens": "600000"})
    assert gateway.limits == {"tokens": 600000}
    assert "learned from the server" in lim.adjustments[0]


@pytest.mark.parametrize("seed", range(8))
def test_answers_telling_limits_again_and_again_leave_the_lowest_told(ft, seed):
    """A run's answers each tell the limits, nearly always as the one before: whatever the
    sequence (repeats, a lower one, a higher one after it, garbage, none, another header
    order), each limit is the lowest valid one told, noted once for each time it fell."""
    import random

    rng = random.Random(seed)
    lim, lowest, falls = limiter(ft), {}, 0
    names = {"requests": "anthropic-ratelimit-requests-limit",
             "input_tokens": "anthropic-ratelimit-input-tokens-limit"}  # fmt: skip
    for _ in range(60):
        told = {
            kind: rng.choice(["4000", "4000", "3000", "5000", "0", "garbage", "2500.0"])
            for kind in rng.sample(sorted(names), rng.randrange(0, 3))
        }
        headers = {"request-id": "r", **{names[k]: v for k, v in told.items()}}
        lim.learn(dict(rng.sample(sorted(headers.items()), len(headers))))
        for kind, raw in told.items():
            value = float(raw) if raw.replace(".", "").isdigit() else 0.0
            if value > 0 and value < lowest.get(kind, float("inf")):
                lowest[kind], falls = value, falls + 1
    assert lim.limits == lowest
    assert len(lim.adjustments) == falls


def test_a_429_with_retry_after_3_pauses_every_worker(ft):
    lim = limiter(ft, concurrency=8)
    sent: list[tuple[str, float]] = []

    async def worker(name: str, delay: float) -> None:
        await ft.sleep(delay)
        ticket = await lim.acquire()
        sent.append((name, ft.now - 1000.0))
        lim.finish(ticket)

    async def told() -> None:
        await ft.sleep(0.5)
        lim.rate_limited(3.0)  # one worker's answer: 429, retry-after: 3

    drive(ft, told(), *(worker(f"w{i}", 0.6 + i * 0.1) for i in range(4)))
    assert [t for _, t in sent] == [3.5, 3.5, 3.5, 3.5]  # nobody sent before 0.5 + 3
    assert lim.cooldowns == 1


def test_waiters_queued_before_a_cooldown_do_not_burst_after_it(ft):
    lim = limiter(ft, 600)  # 10 a second, capacity 1

    async def sender() -> float:
        ticket = await lim.acquire()
        lim.finish(ticket)
        return round(ft.now - 1000.0, 6)

    async def cooldown() -> None:
        await ft.sleep(0.05)
        lim.rate_limited(2.0)

    results = drive(ft, cooldown(), *(sender() for _ in range(6)))
    times = sorted(results[1:])
    assert times[0] == 0  # the first was already through
    after = [t for t in times if t > 0]
    assert min(after) >= 2.05
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert all(g >= 0.099 for g in gaps[1:])  # spaced by the rate again, not all at once


def test_repeated_429s_lower_the_rate_and_quiet_brings_it_back(ft):
    lim = limiter(ft, 3000)
    lim.rate_limited(1.0)
    assert lim.factor == 1.0  # one 429: only the cooldown
    ft.now += 2
    lim.rate_limited(1.0)
    assert lim.factor == pytest.approx(0.8)
    assert lim.buckets["requests"].rate == pytest.approx(40.0)
    ft.now += 2
    lim.rate_limited(1.0)
    assert lim.factor == pytest.approx(0.64)
    for _ in range(6):  # quiet stretches: additive increase, one step each
        ft.now += 10.5
        drive(ft, lim.acquire())
    assert lim.factor == pytest.approx(1.0)
    assert any("lowered to 64%" in a for a in lim.adjustments)
    assert "back up to 100%" in lim.adjustments[-1]


def test_overloaded_lowers_concurrency_and_it_recovers(ft):
    lim = limiter(ft, concurrency=16)
    lim.overloaded()
    assert lim.gate is not None and lim.gate.limit == 16  # an isolated 529: no verdict
    lim.overloaded()
    assert lim.gate.limit == 12  # two in a row, no 2xx between
    ft.now += 0.5
    lim.overloaded()  # the same burst of 529s: counted once
    assert lim.gate.limit == 12
    ft.now += 11
    drive(ft, lim.acquire())
    assert lim.gate.limit == 14


def test_gate_is_fifo_and_follows_its_limit():
    async def scenario() -> list[str]:
        gate, order = Gate(2), []
        gate.set_limit(1)

        async def holder(name: str) -> None:
            await gate.acquire()
            order.append(name)
            await asyncio.sleep(0)
            gate.release()

        await gate.acquire()
        tasks = [asyncio.create_task(holder(n)) for n in "abc"]
        await asyncio.sleep(0)
        gate.set_limit(2)  # one more may go in at once
        await asyncio.sleep(0)
        order.append("|")
        gate.release()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["a", "|", "b", "c"]


def test_isolated_429s_between_answers_do_not_ratchet_the_rate_down(ft):
    lim = limiter(ft, 3000, concurrency=8)
    for _ in range(20):  # random faults: each 429 followed by a 2xx
        ticket = drive(ft, lim.acquire())[0]
        lim.finish(ticket)
        lim.rate_limited(1.0, ticket)
        ft.now += 2
        ticket = drive(ft, lim.acquire())[0]
        lim.finish(ticket)
        lim.answered(ticket)
    assert lim.factor == 1.0 and lim.gate is not None and lim.gate.limit == 8


def test_an_empty_bucket_429_lowers_the_rate_and_not_the_gate(ft):
    lim = limiter(ft, 3000, concurrency=8)
    ticket = drive(ft, lim.acquire())[0]
    for _ in range(3):
        lim.rate_limited(1.0, ticket, explained=True)
        ft.now += 2
    assert lim.factor < 1.0
    assert lim.gate is not None and lim.gate.limit == 8 and lim.cooldowns == 3


def test_an_unexplained_429_lowers_the_gate_and_not_the_rate(ft):
    lim = limiter(ft, 3000, concurrency=8)
    tickets = [drive(ft, lim.acquire())[0] for _ in range(8)]
    lim.rate_limited(1.0, tickets[-1], explained=False)  # sent with 8 in flight
    assert lim.gate is not None and lim.gate.limit == 7  # just under the level refused
    assert lim.factor == 1.0 and lim.cooldowns == 0  # the cap frees as answers end


def test_each_pacing_change_is_said_once_in_its_direction(ft):
    lim = limiter(ft, 3000)
    for _ in range(12):  # 429s in a row, far past the floor
        lim.rate_limited(1.0)
        ft.now += 1.5
    assert lim.factor == pytest.approx(0.2)
    lowered = [a for a in lim.adjustments if "lowered" in a]
    assert len(lowered) == len({a.split(" ", 1)[1] for a in lowered})  # no repeat at the floor
    ft.now += 10.5
    drive(ft, lim.acquire())[0]
    assert "send rate back up to 30%" in lim.adjustments[-1]  # up from 20%: not "lowered"


def test_slow_start_is_not_taken_for_a_slow_down_to_recover_from(ft):
    lim = limiter(ft, concurrency=64)
    ft.now += 60  # a long quiet spell before the first request
    drive(ft, lim.acquire())
    assert lim.gate is not None and lim.gate.limit == 16 and lim.adjustments == []


def test_only_the_controller_writes_a_gates_limit() -> None:
    """One controller (pressure.PressureControl) moves a gate; nothing else sets its limit."""
    root = Path(__file__).resolve().parent.parent / "pipeline"
    writers = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            calls = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if calls and node.func.attr in ("set_limit", "set_ceiling"):  # type: ignore[union-attr]
                writers.append(str(path.relative_to(root)))
    assert set(writers) == {"send/pressure.py"}


def test_a_limiter_is_made_of_parts_a_capacity_a_gate_one_controller(ft):
    lim = limiter(ft, 600, concurrency=4)
    assert lim.capacity.limits == {"requests": 600} and lim.buckets["requests"].rate == 10
    assert lim.gate is not None and lim.control.gate is lim.gate
    assert lim.control.capacity is lim.capacity
    [times] = drive(ft, send_times(ft, lim, 3))
    assert times == pytest.approx([0, 0.1, 0.2]) and lim.sent == 3
