"""The simulator over real HTTP, against SimulatorProcess children on loopback.

Most tests share one simulator (with a ledger file); rate limits, injected faults and
concurrency caps each get the session's simulator started over with them; keys their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from pipeline.input.tokens import estimate_tokens
from pipeline.simulator.config import SimConfig
from pipeline.simulator.process import SimulatorProcess
from tests.simulator_helpers import LABEL_PROMPT, MODEL, message, post, sse_events


@pytest.fixture(scope="module")
def ledger_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim") / "ledger.jsonl"


@pytest.fixture(scope="module")
def sim(ledger_file: Path) -> Any:
    # Its own process, not the session's started over: a ledger file (fixed at the start),
    # and its exit code once stopped.
    with SimulatorProcess(seed=7, ledger_path=str(ledger_file)) as process:
        yield process
    assert process.returncode == 0  # SIGTERM is a clean stop


def test_same_request_twice_gives_the_same_answer(sim: SimulatorProcess) -> None:
    first, second = (post(sim.base_url, message("Describe a queue.")) for _ in range(2))
    assert first.status == second.status == 200
    assert first.json["content"] == second.json["content"]
    assert first.json["usage"] == second.json["usage"]
    assert first.headers["request-id"] != second.headers["request-id"]
    assert first.headers["request-id"].startswith("req_sim_")
    assert first.json["id"].startswith("msg_sim_") and first.json["id"] != second.json["id"]


def test_labels_over_http(sim: SimulatorProcess) -> None:
    for review, label in [
        ("Absolutely love it, excellent quality.", "positive"),
        ("Terrible. It broke and I returned it.", "negative"),
    ]:
        reply = post(sim.base_url, message(LABEL_PROMPT.format(review=review), max_tokens=8))
        assert reply.json["content"] == [{"type": "text", "text": label}]
        assert reply.json["stop_reason"] == "end_turn"


def test_max_tokens_truncates_the_same_answer(sim: SimulatorProcess) -> None:
    full = post(sim.base_url, message("Tell me a long story.", max_tokens=1000)).json
    short = post(sim.base_url, message("Tell me a long story.", max_tokens=5)).json
    assert full["stop_reason"] == "end_turn" and full["usage"]["output_tokens"] >= 20
    assert short["stop_reason"] == "max_tokens" and short["usage"]["output_tokens"] == 5
    assert full["content"][0]["text"].startswith(short["content"][0]["text"])


def test_reply_directive_and_stop_sequences(sim: SimulatorProcess) -> None:
    body = message("[[sim:reply=one two STOP three]]", stop_sequences=["STOP"])
    reply = post(sim.base_url, body).json
    assert reply["content"][0]["text"] == "one two "
    assert (reply["stop_reason"], reply["stop_sequence"]) == ("stop_sequence", "STOP")


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ],
)
def test_scripted_status(sim: SimulatorProcess, status: int, error_type: str) -> None:
    reply = post(sim.base_url, message(f"hello [[sim:status={status}]]"))
    assert reply.status == status
    assert reply.json["type"] == "error" and reply.json["error"]["type"] == error_type
    assert reply.json["request_id"] == reply.headers["request-id"]
    assert reply.headers.get("retry-after") == ("1" if status == 429 else None)


def test_scripted_422_uses_the_gateway_shape(sim: SimulatorProcess) -> None:
    reply = post(sim.base_url, message("[[sim:status=422]]"))
    assert reply.status == 422
    assert reply.json["error"]["code"] == "max_tokens_exceeded"
    assert reply.json["error"]["type"] == "invalid_request_error"


def test_fail_first_fails_that_body_then_succeeds(sim: SimulatorProcess) -> None:
    body = message(f"[[sim:fail_first=2]] {uuid.uuid4()}")
    statuses = [post(sim.base_url, body).status for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert post(sim.base_url, body).status == 200
    billed = [e for e in sim.ledger() if e["prompt_sha256"] == _sha(body)]
    assert len(billed) == 2


def _sha(body: dict[str, Any]) -> str:
    return hashlib.sha256(body["messages"][-1]["content"].encode()).hexdigest()


@pytest.mark.parametrize(
    ("change", "status", "needle"),
    [
        ({"model": None}, 400, "model: Field required"),
        ({"max_tokens": None}, 400, "max_tokens: Field required"),
        ({"messages": None}, 400, "messages: Field required"),
        ({"max_tokens": 0}, 400, "greater than or equal to 1"),
        ({"temperature": 1.5}, 400, "temperature"),
        ({"thinking": {"type": "enabled", "budget_tokens": 500}}, 400, "1024"),
        (
            {"max_tokens": 1024, "thinking": {"type": "enabled", "budget_tokens": 1024}},
            400,
            "max_tokens",
        ),
        ({"messages": []}, 400, "at least one message"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, '"user" role'),
        ({"model": "gpt-4o"}, 404, "gpt-4o"),
    ],
)
def test_validation(
    sim: SimulatorProcess, change: dict[str, Any], status: int, needle: str
) -> None:
    body = {k: v for k, v in {**message("hi"), **change}.items() if v is not None}
    reply = post(sim.base_url, body)
    assert reply.status == status
    assert needle in reply.json["error"]["message"]


def test_unknown_fields_are_ignored_and_unknown_blocks_can_be_asked_for(
    sim: SimulatorProcess,
) -> None:
    reply = post(sim.base_url, message("[[sim:unknown_block]] hi", future_option={"x": 1}))
    assert reply.status == 200
    assert [block["type"] for block in reply.json["content"]] == ["text", "future_block"]
    assert "sim_future_field" in reply.json


def test_forced_tool_over_http(sim: SimulatorProcess) -> None:
    tool = {
        "name": "label",
        "description": "Record the label",
        "input_schema": {
            "type": "object",
            "properties": {"label": {"enum": ["positive", "negative", "neutral"]}},
        },
    }
    body = message(  # skill 1: the label is the simulator's verdict, whatever the model
        "[[sim:skill=1]] Review: perfect, I love it",
        tools=[tool],
        tool_choice={"type": "tool", "name": "label"},
    )
    reply = post(sim.base_url, body).json
    assert reply["stop_reason"] == "tool_use"
    assert reply["content"][0]["input"] == {"label": "positive"}


def test_prompt_cache_creation_then_read(sim: SimulatorProcess) -> None:
    # Above the 4,096-token minimum of the model (Haiku 4.5): below it nothing is cached.
    prefix = f"You label reviews. {uuid.uuid4()} " + "Guidelines. " * 1400
    system = [
        {"type": "text", "text": prefix, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": "Be brief."},
    ]
    first, second = (
        post(sim.base_url, message("Great product!", system=system)).json["usage"] for _ in range(2)
    )
    prefix_tokens = estimate_tokens(prefix)
    assert first["cache_creation_input_tokens"] == prefix_tokens
    assert first["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": prefix_tokens,
    }
    assert first["cache_read_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == prefix_tokens
    assert second["cache_creation_input_tokens"] == 0
    assert first["input_tokens"] == second["input_tokens"] == estimate_tokens("Be brief.") + 3 + 4


def test_ledger_matches_the_responses(sim: SimulatorProcess, ledger_file: Path) -> None:
    bodies = [message(f"ledger check {n}", service_tier="batch" if n else None) for n in range(3)]
    replies = [post(sim.base_url, body) for body in bodies]
    entries = {entry["request_id"]: entry for entry in sim.ledger()}
    in_file = {e["request_id"]: e for e in map(orjson.loads, ledger_file.read_bytes().splitlines())}
    for body, reply in zip(bodies, replies, strict=True):
        entry = entries[reply.headers["request-id"]]
        assert in_file[entry["request_id"]] == entry
        usage = reply.json["usage"]
        assert entry["message_id"] == reply.json["id"]
        assert entry["endpoint"] == "/v1/messages" and entry["model"] == MODEL
        assert entry["prompt_sha256"] == _sha(body) and entry["partial"] is False
        for key in ("input_tokens", "output_tokens", "service_tier"):
            assert entry[key] == usage[key]
        assert entry["cache_read_input_tokens"] == usage["cache_read_input_tokens"]
    assert [entries[r.headers["request-id"]]["service_tier"] for r in replies] == [
        "standard",
        "batch",
        "batch",
    ]


def test_chat_completions_usage_mapping_and_tools(sim: SimulatorProcess) -> None:
    cached = f"Shared instructions {uuid.uuid4()} " + "rule " * 3300  # >= 4,096 tokens
    body = {
        "model": MODEL,
        "max_tokens": 32,
        "messages": [
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": cached, "cache_control": {"type": "ephemeral"}}
                ],
            },
            {"role": "user", "content": "Say something."},
        ],
    }
    first, second = (post(sim.base_url, body, "/v1/chat/completions") for _ in range(2))
    ledger = {entry["request_id"]: entry for entry in sim.ledger()}
    for reply in (first, second):
        usage, entry = reply.json["usage"], ledger[reply.headers["request-id"]]
        assert reply.json["object"] == "chat.completion"
        assert entry["endpoint"] == "/v1/chat/completions"
        billed_input = sum(entry[k] for k in ("input_tokens", "cache_read_input_tokens"))
        billed_input += entry["cache_creation_input_tokens"]
        assert usage["prompt_tokens"] == billed_input
        assert usage["completion_tokens"] == entry["output_tokens"]
        assert usage["total_tokens"] == billed_input + entry["output_tokens"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == entry["cache_read_input_tokens"]
    assert second.json["usage"]["prompt_tokens_details"]["cached_tokens"] == estimate_tokens(cached)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body |= {"tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f"}}}
    choice = post(sim.base_url, body, "/v1/chat/completions").json["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == "{}"
    error = post(sim.base_url, {"model": MODEL}, "/v1/chat/completions")
    assert error.status == 400 and error.json["error"]["param"] is None


def test_streaming_event_sequence(sim: SimulatorProcess) -> None:
    body = message("Stream me a story.", max_tokens=300)
    plain = post(sim.base_url, body).json
    reply = post(sim.base_url, {**body, "stream": True})
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = sse_events(reply.text)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-4:] == [
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    deltas = [data["delta"]["text"] for name, data in events if name == "content_block_delta"]
    assert "".join(deltas) == plain["content"][0]["text"]
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == plain["stop_reason"]
    assert final["usage"]["output_tokens"] == plain["usage"]["output_tokens"]
    assert events[0][1]["message"]["usage"]["input_tokens"] == plain["usage"]["input_tokens"]


def test_stream_error_after_n_deltas_is_billed_as_partial(sim: SimulatorProcess) -> None:
    body = message("[[sim:stream_error_after=2]] Stream a story.", max_tokens=300, stream=True)
    reply = post(sim.base_url, body)
    events = sse_events(reply.text)
    assert reply.status == 200
    assert [name for name, _ in events][-3:] == ["content_block_delta"] * 2 + ["error"]
    assert events[-1][1]["error"]["type"] == "overloaded_error"
    entry = next(e for e in sim.ledger() if e["request_id"] == reply.headers["request-id"])
    sent = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert entry["partial"] is True and entry["output_tokens"] == estimate_tokens(sent)


def test_thinking_over_http_streams_signature(sim: SimulatorProcess) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    body = message("Think first.", max_tokens=2048, thinking=thinking, stream=True)
    events = sse_events(post(sim.base_url, body).text)
    delta_types = [data["delta"]["type"] for name, data in events if name == "content_block_delta"]
    assert delta_types[0] == "thinking_delta" and "signature_delta" in delta_types
    assert delta_types[-1] == "text_delta"


# ---------------------------------------------------------------- limits, faults, keys


def test_rate_limit_answers_429_with_retry_after_and_headers(
    session_sim: SimulatorProcess,
) -> None:
    # one request fits, then 1 per 10 s
    with session_sim.started_over(rpm=6, burst_s=10) as limited:
        ok = post(limited.base_url, message("first"))
        refused = post(limited.base_url, message("second"))
        stats = limited.stats()
        ledger = limited.ledger()
    assert ok.status == 200 and refused.status == 429
    assert refused.json["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["retry-after"]) in (9, 10)
    for reply in (ok, refused):
        assert reply.headers["anthropic-ratelimit-requests-limit"] == "6"
        assert reply.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert reply.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert len(ledger) == 1 and stats["by_status"] == {"200": 1, "429": 1}


async def _outcomes(base_url: str, bodies: list[dict[str, Any]]) -> list[str]:
    outcomes = []
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            try:
                async with session.post(base_url + "/v1/messages", json=body) as response:
                    await response.read()
                    outcomes.append(str(response.status))
            except aiohttp.ServerDisconnectedError:
                outcomes.append("drop")
    return outcomes


def test_injected_faults_are_seeded_never_billed_and_drops_disconnect(
    session_sim: SimulatorProcess,
) -> None:
    faults = {"fail_rate": 0.6, "seed": 3}
    with session_sim.started_over(**faults) as faulty:
        bodies = [message(f"request {n}") for n in range(30)]
        first = asyncio.run(_outcomes(faulty.base_url, bodies))
        stats, ledger = faulty.stats(), faulty.ledger()
        faulty.reset(**faults)  # started over with the same settings
        again = asyncio.run(_outcomes(faulty.base_url, bodies))
        scripted = asyncio.run(_outcomes(faulty.base_url, [message("[[sim:reply=ok]]")] * 5))
    assert first == again  # same seed, same arrival order, same faults
    assert {"200", "429", "500", "529", "drop"} <= set(first)
    assert len(ledger) == stats["billed"] == first.count("200")
    assert stats["dropped"] == first.count("drop")
    assert scripted == ["200"] * 5  # scripted triggers bypass random faults


async def _concurrent(base_url: str, count: int) -> list[tuple[int, Any]]:
    async with aiohttp.ClientSession() as session:

        async def one(n: int) -> tuple[int, Any]:
            async with session.post(base_url + "/v1/messages", json=message(f"c{n}")) as r:
                return r.status, await r.json()

        return await asyncio.gather(*(one(n) for n in range(count)))


def test_max_concurrency_and_latency(session_sim: SimulatorProcess) -> None:
    with session_sim.started_over(max_concurrency=2, latency_ms=600) as capped:
        results = asyncio.run(_concurrent(capped.base_url, 5))
        stats = capped.stats()
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 429, 429, 429]
    refusal = next(body for status, body in results if status == 429)
    assert refusal["error"]["code"] == "rate_limit_exceeded"
    assert refusal["error"]["message"] == "too many concurrent requests"
    assert stats["max_in_flight"] == 2 and stats["billed"] == 2


def test_required_key() -> None:
    # Its own process: the required key reaches the child through its environment (KEY_ENV),
    # which a reset does not go through.
    with SimulatorProcess(SimConfig(), require_key="sk-test-123") as keyed:
        missing = post(keyed.base_url, message("hi"))
        wrong = post(keyed.base_url, message("hi"), x_api_key="nope")
        bearer = post(keyed.base_url, message("hi"), authorization="Bearer sk-test-123")
        header = post(keyed.base_url, message("hi"), x_api_key="sk-test-123")
    assert missing.status == wrong.status == 401
    assert wrong.json["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    assert bearer.status == header.status == 200


def test_config_replace_keeps_the_simulator_process_config() -> None:
    process = SimulatorProcess(SimConfig(seed=5), rpm=10)
    assert process.config == replace(SimConfig(seed=5), rpm=10)
