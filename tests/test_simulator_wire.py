"""What the simulator puts on the wire where the real endpoints have their own habits: the
request id and rate-limit headers of /v1/chat/completions, a stable tokens-* header, the
529 status line, and JSON errors for routes that do not exist. Real HTTP on loopback.
"""

from __future__ import annotations

import re
import socket
from datetime import datetime
from typing import Any

import orjson
import pytest

from pipeline.simulator.process import SimulatorProcess
from tests.simulator_helpers import message, post

DURATION = re.compile(r"^(\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s)$")  # "20ms", "1.5s", "6m0s"
REQUEST_ID = re.compile(r"^req_sim_[0-9a-f]+$")


@pytest.fixture
def limited(session_sim: SimulatorProcess) -> Any:
    # Output is the tighter token limit (6,000 < 60,000 a minute); burst 2 s of each.
    with session_sim.started_over(rpm=6000, itpm=60000, otpm=6000) as process:
        yield process


def test_chat_completions_sends_x_request_id_and_x_ratelimit_headers(
    limited: SimulatorProcess,
) -> None:
    reply = post(limited.base_url, message("Say something."), "/v1/chat/completions")
    headers = reply.headers
    assert reply.status == 200
    assert REQUEST_ID.match(headers["x-request-id"])
    assert headers["x-request-id"] == headers["request-id"]
    assert headers["x-ratelimit-limit-requests"] == "6000"
    assert headers["x-ratelimit-limit-tokens"] == "6000"  # the tightest token limit
    assert int(headers["x-ratelimit-remaining-requests"]) < 200  # 2 s of 100 a second
    assert int(headers["x-ratelimit-remaining-tokens"]) < 200
    for kind in ("requests", "tokens"):
        assert DURATION.match(headers[f"x-ratelimit-reset-{kind}"]), headers
    assert not [name for name in headers if name.startswith("anthropic-ratelimit-")]
    error = post(limited.base_url, {"model": "claude-x"}, "/v1/chat/completions")
    assert error.status == 400 and error.headers["x-request-id"] == error.headers["request-id"]
    assert "x-ratelimit-limit-requests" in error.headers


def test_messages_keeps_the_anthropic_names(limited: SimulatorProcess) -> None:
    headers = post(limited.base_url, message("hi")).headers
    assert REQUEST_ID.match(headers["request-id"]) and "x-request-id" not in headers
    assert headers["anthropic-ratelimit-requests-limit"] == "6000"
    assert not [name for name in headers if name.startswith("x-ratelimit-")]


def _time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")


def test_tokens_headers_are_the_combined_tightest_limit_on_every_answer(
    session_sim: SimulatorProcess,
) -> None:
    # Alternate an input-heavy and an output-heavy answer: which bucket is emptier in
    # proportion changes from one answer to the next; the tokens-* limit must not.
    heavy_input = message("word " * 4800, max_tokens=5)  # 6,000 tokens in
    heavy_output = message("[[sim:reply=" + "many words here " * 125 + "]]", max_tokens=600)
    emptier = set()
    # buckets of 30,000 input and 3,000 output tokens (30 s of each)
    with session_sim.started_over(itpm=60000, otpm=6000, burst_s=30) as sim:
        for body in [heavy_output, heavy_input] * 2:
            reply = post(sim.base_url, body)
            assert reply.status == 200, reply.text
            h = {k.removeprefix("anthropic-ratelimit-"): v for k, v in reply.headers.items()}
            assert h["tokens-limit"] == "6000"
            left = int(h["input-tokens-remaining"]), int(h["output-tokens-remaining"])
            assert abs(int(h["tokens-remaining"]) - min(left)) <= 1
            latest = max(_time(h["input-tokens-reset"]), _time(h["output-tokens-reset"]))
            assert abs((_time(h["tokens-reset"]) - latest).total_seconds()) <= 1
            emptier.add("input" if left[0] / 30000 < left[1] / 3000 else "output")
    assert emptier == {"input", "output"}  # the case that used to flip the limit


def _status_line(base_url: str, raw_request: bytes) -> bytes:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(raw_request)
        received = b""
        while b"\r\n" not in received:
            chunk = connection.recv(4096)
            assert chunk, "the connection closed before a status line"
            received += chunk
    return received.split(b"\r\n", 1)[0]


def test_529_has_a_reason_phrase(limited: SimulatorProcess) -> None:
    body = orjson.dumps(message("[[sim:status=529]]"))
    request = (
        b"POST /v1/messages HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )
    assert _status_line(limited.base_url, request) == b"HTTP/1.1 529 Overloaded"


@pytest.mark.parametrize("path", ["/v1/nothing", "/v1/messages/batches/unknown/nothing", "/"])
def test_unknown_routes_answer_a_json_404(limited: SimulatorProcess, path: str) -> None:
    reply = post(limited.base_url, message("hi"), path)
    assert reply.status == 404
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "Not Found"},
        "request_id": reply.headers["request-id"],
    }
    assert not [name for name in reply.headers if "ratelimit" in name]


def test_wrong_method_answers_a_json_405(limited: SimulatorProcess) -> None:
    request = b"GET /v1/messages HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n"
    assert _status_line(limited.base_url, request) == b"HTTP/1.1 405 Method Not Allowed"
    with socket.create_connection(_address(limited.base_url), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(4096):
            answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"\r\nAllow: POST" in head
    parsed = orjson.loads(body)
    assert parsed["error"] == {"type": "invalid_request_error", "message": "Method Not Allowed"}


def _address(base_url: str) -> tuple[str, int]:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)
