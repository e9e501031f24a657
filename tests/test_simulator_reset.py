"""A reset starts the simulator over: with other settings if asked (what lets the tests share
one server process instead of starting one each), back to its own without, and only once
the requests being answered have ended, so none is billed into the next ledger. And what
a session answers above temperature 0 is the same whatever order its requests arrive in,
and again after a reset.

Each test runs its own in-process server (`build_app`), or its own state; latencies are
real but short.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import polars as pl
from aiohttp.test_utils import TestServer

from pipeline.simulator.answers import NO_DIRECTIVES
from pipeline.simulator.config import SimConfig
from pipeline.simulator.messages import parse_request
from pipeline.simulator.profiles import STATED_MARKER
from pipeline.simulator.server import build_app
from pipeline.simulator.state import STATE, SimulatorState
from tests.simulator_helpers import LABEL_PROMPT, MODEL

SAMPLE_REVIEWS = Path(__file__).resolve().parents[1] / "sample_data" / "reviews.csv"

Json = dict[str, Any]
ASK: Json = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


class Sim:
    def __init__(self, server: TestServer, session: aiohttp.ClientSession) -> None:
        self.server, self.session = server, session
        self.state: SimulatorState = server.app[STATE]

    async def post(self, path: str, body: Json | None = None) -> tuple[int, Json]:
        data = orjson.dumps(body) if body is not None else b""
        async with self.session.post(self.server.make_url(path), data=data) as reply:
            return reply.status, orjson.loads(await reply.read())

    async def ask(self) -> int:
        return (await self.post("/v1/messages", ASK))[0]

    async def reset(self, **settings: Any) -> tuple[int, Json]:
        return await self.post("/_sim/reset", {"settings": settings} if settings else None)


def run(scenario: Callable[[Sim], Awaitable[None]], **config: Any) -> None:
    async def main() -> None:
        server = TestServer(build_app(SimConfig(**config)))
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                await scenario(Sim(server, session))
        finally:
            await server.close()

    asyncio.run(main())


def test_a_reset_with_settings_behaves_as_a_server_started_with_them_until_the_next() -> None:
    async def scenario(sim: Sim) -> None:
        assert await sim.ask() == 200
        assert (await sim.reset(outage_for_s=60.0))[0] == 200  # down from the first request
        assert [await sim.ask(), await sim.ask()] == [503, 503]
        assert sim.state.config.latency_ms == 5.0  # the rest: the flags it started with
        assert (await sim.reset())[0] == 200  # its own settings again
        assert await sim.ask() == 200
        assert sim.state.config == SimConfig(latency_ms=5.0)

    run(scenario, latency_ms=5.0)


def test_a_setting_fixed_at_the_start_or_out_of_range_is_refused_and_nothing_is_cleared() -> None:
    async def scenario(sim: Sim) -> None:
        assert await sim.ask() == 200
        for bad in ({"port": 1}, {"ledger_path": "/tmp/x"}, {"latency_ms": -1}, {"nope": 1}):
            status, reply = await sim.reset(**bad)
            assert status == 400, (bad, reply)
            assert next(iter(bad)) in reply["error"]["message"]
        assert len(sim.state.ledger.entries) == 1  # the refused resets cleared nothing
        assert sim.state.config == SimConfig()

    run(scenario)


def test_a_reset_waits_for_the_answers_being_served_so_the_next_ledger_starts_empty() -> None:
    async def scenario(sim: Sim) -> None:
        answer = asyncio.ensure_future(sim.ask())
        while not sim.state.stats.in_flight:  # the request is being answered (300 ms)
            await asyncio.sleep(0.005)
        status, reply = await sim.reset()
        assert status == 200 and reply["in_flight"] == 0
        assert answer.done() and answer.result() == 200  # it ended before the reset
        assert sim.state.ledger.entries == [] and sim.state.stats.billed == 0
        assert await sim.ask() == 200
        assert len(sim.state.ledger.entries) == 1

    run(scenario, latency_ms=300.0)


def test_hot_answers_are_the_same_whatever_order_the_requests_arrive_in() -> None:
    """Above temperature 0 identical requests differ (the cascade's samples of a row), yet
    a session answers the same whatever order its requests arrive in, and again after a
    reset: each request draws by its content and the identical ones before it."""
    reviews = pl.read_csv(SAMPLE_REVIEWS)["text"].to_list()[:30]
    asks = [text for text in reviews for _ in range(3)]  # three samples of each row

    def answers(order: list[str], state: SimulatorState) -> dict[tuple[str, int], str]:
        got: dict[tuple[str, int], str] = {}
        for text in order:
            blocks = [{"type": "text", "text": LABEL_PROMPT.format(review=text)}]
            blocks.append({"type": "text", "text": f"Last line: `{STATED_MARKER}`"})
            body = {"model": MODEL, "max_tokens": 32, "temperature": 1.0}
            parsed = parse_request({**body, "messages": [{"role": "user", "content": blocks}]})
            answer = state.answer(parsed.prompt, NO_DIRECTIVES)
            got[text, sum(t == text for t, _ in got)] = str(answer.blocks[0]["text"])
        return got

    in_order = answers(asks, SimulatorState(SimConfig(seed=3)))
    shuffled = asks.copy()
    random.Random(1).shuffle(shuffled)
    state = SimulatorState(SimConfig(seed=3))
    assert answers(shuffled, state) == in_order
    state.reset()
    assert answers(list(reversed(asks)), state) == in_order
    samples = [{in_order[text, n] for n in range(3)} for text in reviews]
    assert any(len(each) > 1 for each in samples)  # identical requests differ
    other_seed = answers(asks, SimulatorState(SimConfig(seed=4)))
    assert other_seed != in_order
