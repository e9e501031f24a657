"""ApiClient over httpx.MockTransport: which answers are retried, how long it waits."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from pipeline.client import ApiClient
from pipeline.limits import Limiter
from pipeline.transport import HttpxTransport

OK_BODY = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5-20251001",
    "content": [{"type": "text", "text": "positive"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 12, "output_tokens": 1},
}


def error(status: int, kind: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"type": "error", "error": {"type": kind, "message": f"{kind} happened"}}
    return httpx.Response(status, json=body, headers=headers or {})


class Script:
    """Answers in order; an exception instance is raised instead of answering."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeTime:
    """A clock that only moves when someone sleeps: tests never wait."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make_client(script: Script, *, max_retries: int = 4) -> tuple[ApiClient, list[float]]:
    time = FakeTime()
    transport = HttpxTransport(transport=httpx.MockTransport(script))
    pacer = Limiter(None, clock=time.clock, sleep=time.sleep)
    client = ApiClient(
        transport,
        "http://sim/v1/messages",
        {"authorization": "Bearer k"},
        pacer,
        max_retries=max_retries,
        clock=time.clock,
        sleep=time.sleep,
        jitter=lambda: 0.0,
    )
    return client, time.slept


def call(client: ApiClient):
    return asyncio.run(client.call(b"{}"))


@pytest.mark.parametrize(
    "failure",
    [
        error(429, "rate_limit_error"),
        error(500, "api_error"),
        error(529, "overloaded_error"),
        error(408, "timeout_error"),
        error(409, "conflict"),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("server disconnected"),
        httpx.Response(200, text="<html>proxy error</html>"),
    ],
    ids=["429", "500", "529", "408", "409", "connect", "timeout", "dropped", "html-200"],
)
def test_transient_failures_are_retried_until_ok(failure):
    script = Script(failure, failure, httpx.Response(200, json=OK_BODY))
    client, slept = make_client(script)
    result = call(client)
    assert result.answer is not None and result.answer.text == "positive"
    assert result.attempts == 3 and script.calls == 3
    assert len(slept) >= 2


@pytest.mark.parametrize(
    "status,kind",
    [
        (400, "invalid_request_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (401, "authentication_error"),
        (403, "permission_error"),
    ],
)
def test_client_errors_are_not_retried(status, kind):
    script = Script(error(status, kind), httpx.Response(200, json=OK_BODY))
    client, slept = make_client(script)
    result = call(client)
    assert result.answer is None
    assert (result.http_status, result.error_type, result.attempts) == (status, kind, 1)
    assert result.error_message == f"{kind} happened"
    assert script.calls == 1 and slept == []


def test_gateway_error_shape_is_understood():
    body = {
        "error": {
            "type": "invalid_request_error",
            "code": "max_tokens_exceeded",
            "message": "max_tokens too large",
        }
    }
    client, _ = make_client(Script(httpx.Response(422, json=body)))
    result = call(client)
    assert result.http_status == 422
    assert result.error_type == "invalid_request_error"
    assert "max_tokens_exceeded" in (result.error_message or "")


def test_x_should_retry_overrides_the_status():
    no_retry = error(500, "api_error", {"x-should-retry": "false"})
    client, _ = make_client(Script(no_retry))
    assert call(client).attempts == 1
    retry = error(400, "invalid_request_error", {"x-should-retry": "true"})
    client, _ = make_client(Script(retry, httpx.Response(200, json=OK_BODY)))
    assert call(client).attempts == 2


def test_retry_after_is_honoured_and_pauses_every_sender():
    script = Script(
        error(429, "rate_limit_error", {"retry-after": "3"}), httpx.Response(200, json=OK_BODY)
    )
    client, slept = make_client(script)
    result = call(client)
    assert result.attempts == 2
    assert client.limiter.cooldowns == 1  # a shared cooldown that every worker passes
    assert slept == [3.0]  # the worker waited once; the cooldown had run out by then


def test_retry_after_ms_wins_over_retry_after():
    script = Script(
        error(529, "overloaded_error", {"retry-after-ms": "250", "retry-after": "9"}),
        httpx.Response(200, json=OK_BODY),
    )
    client, slept = make_client(script)
    call(client)
    assert slept == [0.25]


def test_gives_up_after_max_retries_with_the_last_error():
    script = Script(*[error(500, "api_error")] * 4)
    client, slept = make_client(script, max_retries=3)
    result = call(client)
    assert result.answer is None and result.attempts == 4
    assert (result.http_status, result.error_type) == (500, "api_error")
    assert slept == [0.5, 1.0, 2.0]  # exponential backoff, jitter 0
    assert client.retries["api_error"] == 3


def test_request_id_and_body_reach_the_server():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=OK_BODY, headers={"request-id": "req_abc"})

    client = ApiClient(
        HttpxTransport(transport=httpx.MockTransport(handler)),
        "http://sim/v1/messages",
        {"x-api-key": "k"},
        Limiter(None),
        max_retries=0,
    )
    result = asyncio.run(client.call(orjson.dumps({"model": "m"})))
    assert result.request_id == "req_abc"
    assert seen[0].headers["x-api-key"] == "k"
    assert orjson.loads(seen[0].content) == {"model": "m"}
