"""The simulator under pressure, over real HTTP: the gateway's cap on requests in flight, the
outage window and streams with a corrupted event (what the client's tests of issue 10 use).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest

from pipeline.simulator.process import SimulatorProcess
from tests.simulator_helpers import message, post, sse_events

RATE_LIMIT_PREFIXES = ("anthropic-ratelimit-", "x-ratelimit-")
CONCURRENCY_BODY = {"type": "rate_limit_error", "code": "rate_limit_exceeded"}
OUTAGE_MESSAGE = "Service Unavailable: the API is temporarily unable to serve requests"


class Answer:
    def __init__(self, status: int, headers: dict[str, str], text: str) -> None:
        self.status, self.headers, self.text = status, headers, text

    @property
    def json(self) -> Any:
        return orjson.loads(self.text)


async def _send(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], path: str = "/v1/messages"
) -> Answer:
    async with session.post(url + path, json=body) as response:
        headers = {name.lower(): value for name, value in response.headers.items()}
        return Answer(response.status, headers, await response.text())


def _rate_limit_headers(headers: dict[str, str]) -> list[str]:
    return [name for name in headers if name.startswith(RATE_LIMIT_PREFIXES)]


async def _wait_in_flight(sim: SimulatorProcess, count: int) -> None:
    deadline = time.monotonic() + 5
    while (await asyncio.to_thread(sim.stats))["in_flight"] < count:
        assert time.monotonic() < deadline, "the held requests never arrived"
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- the concurrency cap


@pytest.fixture
def capped(session_sim: SimulatorProcess) -> Any:
    # rpm is set so that normal answers do carry rate-limit headers: the cap's must not.
    with session_sim.started_over(max_concurrency=3, latency_ms=400, rpm=6000) as process:
        yield process


async def _fill_then_overflow(sim: SimulatorProcess) -> tuple[list[Answer], list[Answer]]:
    """Hold 3 requests in flight, then send one more to each endpoint while they are."""
    async with aiohttp.ClientSession() as session:
        held = [
            asyncio.create_task(_send(session, sim.base_url, message(f"held {n}")))
            for n in range(3)
        ]
        await _wait_in_flight(sim, 3)
        extra = [
            await _send(session, sim.base_url, message("one too many")),
            await _send(session, sim.base_url, message("one more"), "/v1/chat/completions"),
        ]
        return list(await asyncio.gather(*held)), extra


def test_cap_answer_is_the_gateways_429_without_rate_limit_headers(
    capped: SimulatorProcess,
) -> None:
    held, (refused, refused_chat) = asyncio.run(_fill_then_overflow(capped))
    assert [answer.status for answer in held] == [200, 200, 200]
    assert all(_rate_limit_headers(answer.headers) for answer in held)  # the contrast
    request_id = refused.headers["request-id"]
    assert refused.status == 429
    assert refused.json == {
        "error": CONCURRENCY_BODY
        | {"message": "too many concurrent requests"}
        | {"request_id": request_id}
    }
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"].startswith("application/json")
    assert _rate_limit_headers(refused.headers) == []
    assert refused_chat.status == 429
    assert refused_chat.json == {
        "error": {
            "message": "too many concurrent requests",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert refused_chat.headers["retry-after"] == "1"
    assert refused_chat.headers["x-request-id"] == refused_chat.headers["request-id"]
    assert _rate_limit_headers(refused_chat.headers) == []
    stats = capped.stats()
    assert stats["by_status"] == {"200": 3, "429": 2}
    assert stats["refused"] == {"concurrency": 2, "outage": 0, "rate_limit": 0}
    assert stats["billed"] == len(capped.ledger()) == 3  # the cap's 429s are not billed


async def _burst(sim: SimulatorProcess, count: int) -> list[int]:
    async with aiohttp.ClientSession() as session:
        bodies = [message(f"burst {n}") for n in range(count)]
        answers = await asyncio.gather(*(_send(session, sim.base_url, b) for b in bodies))
    return [answer.status for answer in answers]


def test_exactly_the_cap_is_in_flight_at_once(capped: SimulatorProcess) -> None:
    statuses = asyncio.run(_burst(capped, 10))
    assert sorted(statuses) == [200] * 3 + [429] * 7
    stats = capped.stats()
    assert stats["max_in_flight"] == 3 and stats["in_flight"] == 0
    assert stats["refused"]["concurrency"] == 7
    ledger = capped.ledger()
    assert len(ledger) == 3 and max(entry["in_flight"] for entry in ledger) == 3
    # The slots are free again once the answers are out.
    assert sorted(asyncio.run(_burst(capped, 3))) == [200, 200, 200]


# ---------------------------------------------------------------- the outage


def _poll(base_url: str, until_s: float) -> list[tuple[float, int]]:
    """(seconds from the start until the answer came, status) of requests sent every 20 ms."""
    start = time.monotonic()
    seen = []
    while time.monotonic() - start < until_s:
        status = post(base_url, message(f"poll {len(seen)}")).status
        seen.append((time.monotonic() - start, status))
        time.sleep(0.02)
    return seen


def test_configured_outage_is_503_during_the_window_and_200_after(
    session_sim: SimulatorProcess,
) -> None:
    with session_sim.started_over(outage_after_s=0.3, outage_for_s=0.5) as sim:
        seen = _poll(sim.base_url, 1.2)
        stats, ledger = sim.stats(), sim.ledger()
    statuses = [status for _, status in seen]
    first_503 = statuses.index(503)
    last_503 = len(statuses) - 1 - statuses[::-1].index(503)
    assert set(statuses[:first_503]) == {200} and first_503 > 0
    assert set(statuses[first_503 : last_503 + 1]) == {503}  # one unbroken window
    assert set(statuses[last_503 + 1 :]) == {200} and last_503 < len(statuses) - 1
    # An answer comes after its request arrived, and the window is timed from the first.
    assert seen[first_503][0] >= 0.3 and seen[last_503 + 1][0] >= 0.8
    assert stats["refused"]["outage"] == statuses.count(503) == stats["by_status"]["503"]
    assert len(ledger) == statuses.count(200)  # nothing answered 503 is billed
    window = stats["outage"]
    assert window["end_ts"] - window["start_ts"] == pytest.approx(0.5)
    assert window["start_ts"] - ledger[0]["ts"] == pytest.approx(0.3, abs=0.05)
    assert not window["active"]
    # The door is shut in the window: a request let in just before it may be billed just
    # inside it (on a busy machine), and the poll sends one at a time: at most that one.
    inside = [i for i, e in enumerate(ledger) if window["start_ts"] <= e["ts"] < window["end_ts"]]
    assert inside in ([], [first_503 - 1]), inside


def test_outage_started_by_a_test_covers_every_endpoint(capped: SimulatorProcess) -> None:
    window = capped.outage(0.4)
    assert window["active"] and window["end_ts"] - window["start_ts"] == pytest.approx(0.4)
    messages = post(capped.base_url, message("down?"))
    chat = post(capped.base_url, message("down?"), "/v1/chat/completions")
    count = post(capped.base_url, message("down?"), "/v1/messages/count_tokens")
    assert messages.status == chat.status == count.status == 503
    assert messages.json == {
        "type": "error",
        "error": {"type": "api_error", "message": OUTAGE_MESSAGE},
        "request_id": messages.headers["request-id"],
    }
    assert chat.json["error"] | {"message": ""} == {
        "message": "",
        "type": "api_error",
        "param": None,
        "code": "service_unavailable",
    }
    for answer in (messages, chat, count):
        assert "retry-after" not in answer.headers and not _rate_limit_headers(answer.headers)
    time.sleep(max(0.0, window["end_ts"] - time.time()) + 0.02)
    assert post(capped.base_url, message("back?")).status == 200
    assert capped.stats()["refused"]["outage"] == 3


def test_outage_endpoint_rejects_a_bad_window(capped: SimulatorProcess) -> None:
    reply = post(capped.base_url, {"for_s": -1}, "/_sim/outage")
    assert reply.status == 400 and reply.json["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------- corrupted events


def raw_events(text: str) -> list[tuple[str, str]]:
    """(event name, raw data) of each SSE frame, parsed or not."""
    events = []
    for frame in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        events.append((lines["event"], lines["data"]))
    return events


def unparsable(events: list[tuple[str, str]]) -> list[int]:
    bad = []
    for index, (_, data) in enumerate(events):
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            bad.append(index)
    return bad


@pytest.fixture
def sim(session_sim: SimulatorProcess) -> Any:
    with session_sim.started_over(seed=11) as process:
        yield process


def _story(directive: str) -> dict[str, Any]:
    return message(f"{directive} Tell a long story. {uuid.uuid4()}", max_tokens=400, stream=True)


def _billed(sim: SimulatorProcess, answer: Any) -> dict[str, Any]:
    request_id = answer.headers["request-id"]
    return next(entry for entry in sim.ledger() if entry["request_id"] == request_id)


def test_corrupt_event_first_garbles_one_middle_event_then_streams_whole(
    sim: SimulatorProcess,
) -> None:
    body = _story("[[sim:corrupt_event_first=1]]")
    broken, whole, again = (post(sim.base_url, body) for _ in range(3))
    events = raw_events(broken.text)
    bad = unparsable(events)
    assert broken.status == 200 and len(bad) == 1
    index = bad[0]
    assert 0 < index < len(events) - 1  # in the middle: never the first, never the last
    assert events[index][0] == "content_block_delta"
    assert unparsable(raw_events(whole.text)) == unparsable(raw_events(again.text)) == []
    # Apart from the garbled event, the broken stream is the whole one.
    good = sse_events(whole.text)
    assert len(events) == len(good)
    assert [name for name, _ in events] == [name for name, _ in good]
    entry, whole_entry = _billed(sim, broken), _billed(sim, whole)
    assert entry["corrupted_event"] == index and whole_entry["corrupted_event"] is None
    assert entry["partial"] is False  # billed in full: the tokens were generated
    assert (
        entry["output_tokens"]
        == whole_entry["output_tokens"]
        == good[-2][1]["usage"]["output_tokens"]
    )
    assert entry["input_tokens"] == whole_entry["input_tokens"]


@pytest.mark.parametrize(("at", "name"), [(0, "message_start"), (-2, "message_delta")])
def test_corrupt_event_at_picks_the_event(sim: SimulatorProcess, at: int, name: str) -> None:
    body = _story(f"[[sim:corrupt_event_at={at}]]")
    for _ in range(2):  # without corrupt_event_first: every stream of the prompt
        events = raw_events(post(sim.base_url, body).text)
        bad = unparsable(events)
        assert len(bad) == 1 and events[bad[0]][0] == name
    last = raw_events(post(sim.base_url, _story("[[sim:corrupt_event_at=99]]")).text)
    assert unparsable(last) == [len(last) - 2]  # clamped: never the last event


def test_corrupt_event_directive_leaves_unstreamed_answers_alone(sim: SimulatorProcess) -> None:
    body = _story("[[sim:corrupt_event_first=5]]") | {"stream": False}
    reply = post(sim.base_url, body)
    assert reply.status == 200 and reply.json["type"] == "message"


async def _streams(base_url: str, count: int) -> list[str]:
    async with aiohttp.ClientSession() as session:
        texts = []
        for n in range(count):  # one at a time: the draws follow arrival order
            body = message(f"Stream {n}, a long one.", max_tokens=300, stream=True)
            texts.append((await _send(session, base_url, body)).text)
        return texts


def test_fail_corrupt_event_rate_is_seeded_and_billed(session_sim: SimulatorProcess) -> None:
    faults = {"fail_corrupt_event": 0.4, "seed": 5}
    with session_sim.started_over(**faults) as faulty:
        first = asyncio.run(_streams(faulty.base_url, 20))
        stats, ledger = faulty.stats(), faulty.ledger()
        faulty.reset(**faults)  # started over with the same settings
        again = asyncio.run(_streams(faulty.base_url, 20))
        plain = post(faulty.base_url, message("not streamed", max_tokens=300))
    bad = [unparsable(raw_events(text)) for text in first]
    assert bad == [unparsable(raw_events(text)) for text in again]  # same seed, same faults
    corrupted = [indexes for indexes in bad if indexes]
    assert 3 <= len(corrupted) <= 14 and all(len(indexes) == 1 for indexes in corrupted)
    for text, indexes in zip(first, bad, strict=True):
        assert all(0 < index < len(raw_events(text)) - 1 for index in indexes)
    assert stats["corrupted_streams"] == len(corrupted)
    assert stats["billed"] == len(ledger) == 20  # every corrupted stream is billed
    assert [entry["corrupted_event"] for entry in ledger] == [
        indexes[0] if indexes else None for indexes in bad
    ]
    assert plain.status == 200
