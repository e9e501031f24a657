"""The simulator's prompt cache over HTTP: breakpoints, minimum lengths, write-then-read,
parallel writes, lifetimes, TTLs, models and batches.

Each test runs its own in-process server (`build_app` on a fake clock, so lifetimes are
checked without waiting); the answers' latency is real but short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from pipeline.simulator.config import SimConfig
from pipeline.simulator.prompt_cache import min_cacheable_tokens
from pipeline.simulator.server import build_app
from pipeline.simulator.state import STATE
from tests.simulator_helpers import MODEL

Json = dict[str, Any]
EPHEMERAL: Json = {"type": "ephemeral"}
HOUR: Json = {"type": "ephemeral", "ttl": "1h"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sim:
    """One in-process simulator and a client session to it."""

    def __init__(self, server: TestServer, session: aiohttp.ClientSession, clock: Clock) -> None:
        self.server, self.session, self.clock = server, session, clock

    async def post(self, body: Json, path: str = "/v1/messages") -> tuple[int, Json]:
        async with self.session.post(self.server.make_url(path), data=orjson.dumps(body)) as r:
            return r.status, orjson.loads(await r.read())

    async def usage(self, body: Json) -> Json:
        status, reply = await self.post(body)
        assert status == 200, reply
        usage: Json = reply["usage"]
        return usage

    async def input_tokens(self, body: Json) -> int:
        """Every input token of `body` (the free count), cached or not."""
        status, reply = await self.post(body, "/v1/messages/count_tokens")
        assert status == 200, reply
        return int(reply["input_tokens"])

    def ledger(self) -> list[Json]:
        return list(self.server.app[STATE].ledger.entries)


def run(scenario: Callable[[Sim], Awaitable[None]], **config: Any) -> None:
    async def main() -> None:
        clock = Clock()
        server = TestServer(build_app(SimConfig(**config), clock=clock))
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                await scenario(Sim(server, session, clock))
        finally:
            await server.close()

    asyncio.run(main())


def text_of(tokens: int, seed: str = "") -> str:
    """Text the shared estimate (4 bytes a token) counts as exactly `tokens` tokens."""
    return (seed + "x" * (4 * tokens))[: 4 * tokens]


def body(system_tokens: int, user: str = "Label this.", model: str = MODEL, seed: str = "") -> Json:
    """A request whose one system block of `system_tokens` tokens is a breakpoint."""
    text = text_of(system_tokens, seed)
    system = [{"type": "text", "text": text, "cache_control": EPHEMERAL}]
    return {
        "model": model,
        "max_tokens": 16,
        "system": system,
        "messages": [{"role": "user", "content": user}],
    }


def written(usage: Json) -> tuple[int, int]:
    return usage["cache_creation_input_tokens"], usage["cache_read_input_tokens"]


@pytest.mark.parametrize(
    ("model", "minimum"),
    [
        ("claude-opus-4-5-20251101", 4096),
        ("claude-opus-4-6", 4096),
        ("claude-haiku-4-5", 4096),
        ("claude-opus-4-7", 2048),
        ("claude-3-haiku-20240307", 2048),
        ("claude-3-5-haiku-latest", 2048),
        ("claude-sonnet-4-6", 1024),
        ("claude-sonnet-4-5-20250929", 1024),
        ("claude-sonnet-4-0", 1024),
        ("claude-opus-4-1-20250805", 1024),
        ("claude-opus-4-20250514", 1024),
        ("claude-3-7-sonnet-latest", 1024),
        ("claude-unknown-9", 1024),
    ],
)
def test_nothing_is_cached_below_the_models_minimum(model: str, minimum: int) -> None:
    assert min_cacheable_tokens(model) == minimum

    async def scenario(sim: Sim) -> None:
        short = body(minimum - 1, model=model)
        for _ in range(2):  # not written, so never read either
            usage = await sim.usage(short)
            assert written(usage) == (0, 0)
            assert usage["input_tokens"] == await sim.input_tokens(short)
        assert written(await sim.usage(body(minimum, model=model))) == (minimum, 0)
        assert [e["cache_event"] for e in sim.ledger()] == [None, None, "write"]

    run(scenario)


def test_write_then_read_and_cached_tokens_are_not_input() -> None:
    async def scenario(sim: Sim) -> None:
        request = body(5000)
        total = await sim.input_tokens(request)
        first, second = [await sim.usage(request) for _ in range(2)]
        assert written(first) == (5000, 0) and first["input_tokens"] == total - 5000
        assert first["cache_creation"] == {
            "ephemeral_5m_input_tokens": 5000,
            "ephemeral_1h_input_tokens": 0,
        }
        assert written(second) == (0, 5000) and second["input_tokens"] == total - 5000
        ledger = sim.ledger()
        assert [e["cache_event"] for e in ledger] == ["write", "read"]
        assert (ledger[0]["cache_5m_tokens"], ledger[0]["cache_1h_tokens"]) == (5000, 0)
        assert ledger[1]["cache_read_input_tokens"] == 5000

    run(scenario)


def test_parallel_requests_before_any_answer_began_each_write() -> None:
    async def scenario(sim: Sim) -> None:
        request = body(5000)
        usages = await asyncio.gather(*(sim.usage(request) for _ in range(8)))
        assert [written(u) for u in usages] == [(5000, 0)] * 8
        after = await asyncio.gather(*(sim.usage(request) for _ in range(3)))
        assert [written(u) for u in after] == [(0, 5000)] * 3
        assert [e["cache_event"] for e in sim.ledger()] == ["write"] * 8 + ["read"] * 3

    run(scenario, latency_ms=100)


def test_a_request_arriving_while_the_first_waits_writes_one_arriving_after_reads() -> None:
    async def scenario(sim: Sim) -> None:
        request = body(5000)
        first = asyncio.ensure_future(sim.usage(request))
        await asyncio.sleep(0.05)  # the first is admitted, its answer not yet begun
        assert written(await sim.usage(request)) == (5000, 0)
        await first
        fresh = body(5000, seed="another prompt ")
        url = sim.server.make_url("/v1/messages")
        async with sim.session.post(url, data=orjson.dumps(fresh | {"stream": True})) as reply:
            assert reply.status == 200  # its headers are out: its answer began...
            late = await sim.usage(fresh)  # ...so a request sent now reads what it wrote
            await reply.read()
        assert written(late) == (0, 5000)
        assert [e["cache_event"] for e in sim.ledger()] == ["write", "write", "write", "read"]

    run(scenario, latency_ms=150)


def test_an_entry_expires_its_ttl_after_its_last_use() -> None:
    async def scenario(sim: Sim) -> None:
        request = body(5000)
        assert written(await sim.usage(request)) == (5000, 0)
        sim.clock.now += 299
        assert written(await sim.usage(request)) == (0, 5000)  # and refreshed: 300 s from now
        sim.clock.now += 299
        assert written(await sim.usage(request)) == (0, 5000)
        sim.clock.now += 300.5
        assert written(await sim.usage(request)) == (5000, 0)  # gone: written again

    run(scenario)


def test_a_one_hour_breakpoint_is_reported_and_lives_an_hour() -> None:
    async def scenario(sim: Sim) -> None:
        request = body(5000)
        request["system"][0]["cache_control"] = HOUR
        first = await sim.usage(request)
        assert first["cache_creation"] == {
            "ephemeral_5m_input_tokens": 0,
            "ephemeral_1h_input_tokens": 5000,
        }
        assert sim.ledger()[0]["cache_1h_tokens"] == 5000
        sim.clock.now += 3599
        assert written(await sim.usage(request)) == (0, 5000)
        sim.clock.now += 3600.5
        assert written(await sim.usage(request)) == (5000, 0)

    run(scenario)


def test_tool_system_and_message_breakpoints_each_cache_a_prefix() -> None:
    tool = {
        "name": "label",
        "description": text_of(4200, "tool "),
        "input_schema": {"type": "object"},
        "cache_control": HOUR,
    }
    tool_tokens = -(-len(orjson.dumps([tool])) // 4)  # the tools' JSON, as input counts it

    def request(system: str, head: str) -> Json:
        content = [
            {"type": "text", "text": text_of(500, head), "cache_control": EPHEMERAL},
            {"type": "text", "text": "Label this."},
        ]
        return {
            "model": MODEL,
            "max_tokens": 16,
            "tools": [tool],
            "system": [{"type": "text", "text": text_of(300, system), "cache_control": HOUR}],
            "messages": [{"role": "user", "content": content}],
        }

    async def scenario(sim: Sim) -> None:
        full = tool_tokens + 300 + 3 + 500  # tools, system, the message's 3 and its head
        first = await sim.usage(request("s1", "h1"))
        assert written(first) == (full, 0)
        # Each stretch at the TTL of the breakpoint that ends it: 1h up to the system's.
        assert first["cache_creation"] == {
            "ephemeral_1h_input_tokens": tool_tokens + 300,
            "ephemeral_5m_input_tokens": 503,
        }
        assert written(await sim.usage(request("s2", "h1"))) == (803, tool_tokens)
        assert written(await sim.usage(request("s1", "h2"))) == (503, tool_tokens + 300)
        assert written(await sim.usage(request("s1", "h1"))) == (0, full)

    run(scenario)


def test_top_level_cache_control_marks_the_last_block() -> None:
    async def scenario(sim: Sim) -> None:
        request = {
            "model": MODEL,
            "max_tokens": 16,
            "cache_control": HOUR,
            "system": text_of(3000),
            "messages": [{"role": "user", "content": text_of(2000, "question ")}],
        }
        total = await sim.input_tokens(request)
        first, second = [await sim.usage(request) for _ in range(2)]
        assert written(first) == (total, 0) and first["input_tokens"] == 0
        assert first["cache_creation"]["ephemeral_1h_input_tokens"] == total
        assert written(second) == (0, total) and second["input_tokens"] == 0

    run(scenario)


def test_more_than_four_breakpoints_is_a_400() -> None:
    def request(marks: int) -> Json:
        blocks: list[Json] = [{"type": "text", "text": f"part {i}"} for i in range(5)]
        for block in blocks[:marks]:
            block["cache_control"] = EPHEMERAL
        return {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": blocks}]}

    async def scenario(sim: Sim) -> None:
        assert (await sim.post(request(4)))[0] == 200
        status, reply = await sim.post(request(5))
        assert status == 400 and reply["error"]["type"] == "invalid_request_error"
        message = "A maximum of 4 blocks with cache_control may be provided. Found 5."
        assert reply["error"]["message"] == message
        # A top-level cache_control takes a fifth slot when the last block is unmarked.
        assert (await sim.post(request(4) | {"cache_control": EPHEMERAL}))[0] == 400
        bad_ttl = body(10)
        bad_ttl["system"][0]["cache_control"] = {"type": "ephemeral", "ttl": "10m"}
        assert (await sim.post(bad_ttl))[0] == 400
        assert len(sim.ledger()) == 1  # only the valid one is billed

    run(scenario)


def test_each_model_has_its_own_entries() -> None:
    async def scenario(sim: Sim) -> None:
        haiku, sonnet = body(5000), body(5000, model="claude-sonnet-4-6")
        assert written(await sim.usage(haiku)) == (5000, 0)
        assert written(await sim.usage(sonnet)) == (5000, 0)
        assert written(await sim.usage(haiku)) == (0, 5000)
        assert written(await sim.usage(sonnet)) == (0, 5000)

    run(scenario)


def test_later_requests_of_a_batch_read_what_earlier_ones_wrote() -> None:
    async def scenario(sim: Sim) -> None:
        requests = [{"custom_id": f"r{i}", "params": body(5000, f"Row {i}.")} for i in range(6)]
        status, batch = await sim.post({"requests": requests}, "/v1/messages/batches")
        assert status == 200, batch
        url = sim.server.make_url(f"/v1/messages/batches/{batch['id']}")
        for _ in range(200):
            async with sim.session.get(url) as reply:
                if (await reply.json())["processing_status"] == "ended":
                    break
            await asyncio.sleep(0.01)
        ledger = sim.ledger()
        assert [e["cache_event"] for e in ledger] == ["write"] + ["read"] * 5
        assert all(e["service_tier"] == "batch" for e in ledger)
        assert [e["cache_read_input_tokens"] for e in ledger] == [0] + [5000] * 5

    run(scenario, batch_latency_s=0.02)


def test_cache_min_tokens_overrides_every_models_minimum() -> None:
    async def scenario(sim: Sim) -> None:
        assert written(await sim.usage(body(99))) == (0, 0)
        assert written(await sim.usage(body(100))) == (100, 0)

    run(scenario, cache_min_tokens=100)
