"""ApiClient over httpx.MockTransport: which answers are retried, how long it waits."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from pipeline.send.client import ApiClient
from pipeline.send.httpx_transport import HttpxTransport
from pipeline.send.limits import Limiter
from tests.conftest import FakeTime

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


# --- redirects: never followed, an error row that says where -------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_an_error_row_and_never_followed(status):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            status,
            headers={"location": "http://elsewhere.example/v1/messages", "x-should-retry": "true"},
        )

    client = ApiClient(
        HttpxTransport(
            httpx.AsyncClient(transport=httpx.MockTransport(handler), follow_redirects=True)
        ),
        "http://sim/v1/messages",
        {"x-api-key": "k"},
        Limiter(None),
        max_retries=3,
    )
    result = asyncio.run(client.call(b"{}"))
    assert [str(r.url) for r in seen] == ["http://sim/v1/messages"]  # not followed, not retried
    assert (result.answer, result.http_status, result.error_type) == (None, status, "redirect")
    assert result.attempts == 1
    assert "http://elsewhere.example/v1/messages" in (result.error_message or "")
    assert "key was not sent there" in (result.error_message or "")


# --- the key, echoed by a server, is scrubbed from everything kept -------------------

SECRET = "sk-ant-echo-SECRET-0123456789"


def echo_client(handler, **options) -> ApiClient:
    return ApiClient(
        HttpxTransport(transport=httpx.MockTransport(handler), **options),
        "http://sim/v1/messages",
        {"x-api-key": SECRET},
        Limiter(None),
        max_retries=0,
        secret=SECRET,
    )


def spelled(text: str) -> str:
    """The key as a JSON \\u escape spells it: invisible in the raw bytes."""
    return "".join(f"\\u{ord(c):04x}" for c in text)


def fields(result) -> list[str]:
    answer = result.answer
    kept = [result.error_type, result.error_message, result.request_id]
    if answer is not None:
        kept += [answer.text, answer.content_json, answer.model, answer.stop_reason]
        kept.append(orjson.dumps(answer.content).decode())
    return [str(value) for value in kept]


def test_a_key_echoed_in_an_answer_is_scrubbed_everywhere():
    raw = (
        b'{"model": "%s", "stop_reason": "%s", "usage": {"input_tokens": 1, "output_tokens": 1},'
        b' "content": [{"type": "text", "text": "your key is %s"},'
        b' {"type": "tool_use", "name": "f", "input": {"%s": "%s"}}]}'
    ) % (
        SECRET.encode(),
        SECRET.encode(),
        spelled(SECRET).encode(),
        SECRET.encode(),
        spelled(SECRET).encode(),
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=raw, headers={"request-id": f"req_{SECRET}"})

    result = asyncio.run(echo_client(handler).call(b"{}"))
    assert result.answer is not None and result.answer.text == "your key is [key]"
    assert result.request_id == "req_[key]" and result.answer.model == "[key]"
    assert result.answer.content[1]["input"] == {"[key]": "[key]"}
    assert not [value for value in fields(result) if SECRET in value]


def test_a_key_echoed_in_an_error_is_scrubbed():
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"type": SECRET, "message": f"bad key {spelled(SECRET)}", "code": SECRET}}
        raw = orjson.dumps(body).replace(
            spelled(SECRET).replace("\\", "\\\\").encode(), spelled(SECRET).encode()
        )
        return httpx.Response(400, content=raw, headers={"request-id": SECRET})

    result = asyncio.run(echo_client(handler).call(b"{}"))
    assert result.error_type == "[key]" and result.request_id == "[key]"
    assert result.error_message == "bad key [key]"  # the code, the same as the type, once


def test_a_key_echoed_in_a_redirect_location_is_scrubbed():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": f"http://evil.example/?k={SECRET}"})

    result = asyncio.run(echo_client(handler).call(b"{}"))
    assert "http://evil.example/?k=[key]" in (result.error_message or "")
    assert SECRET not in (result.error_message or "")


def test_a_key_split_across_stream_events_is_scrubbed_once_assembled():
    half = len(SECRET) // 2
    events = [
        {
            "type": "message_start",
            "message": {"model": "m", "usage": {"input_tokens": 1, "output_tokens": 1}},
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": SECRET[:half]},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": SECRET[half:]},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "message_stop"},
    ]
    raw = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    result = asyncio.run(echo_client(handler).call(b"{}", stream=True))
    assert result.answer is not None and result.answer.text == "[key]"
    assert not [value for value in fields(result) if SECRET in value]


# --- answers without usage, answers too large, attempts too long ---------------------


def test_an_answer_without_usage_keeps_its_reservation_in_the_token_limits():
    no_usage = {k: v for k, v in OK_BODY.items() if k != "usage"}
    levels = []
    for answer in (OK_BODY, no_usage):
        limiter = Limiter(None, None, 6_000_000, clock=lambda: 0.0)  # no refill, no wait
        client = ApiClient(
            HttpxTransport(
                transport=httpx.MockTransport(lambda r, a=answer: httpx.Response(200, json=a))
            ),
            "http://sim/v1/messages",
            {},
            limiter,
            max_retries=0,
        )
        result = asyncio.run(client.call(b"{}", 10, 50_000))
        assert result.answer is not None
        levels.append(limiter.buckets["output_tokens"].level())
    with_usage, without = levels
    assert with_usage - without == pytest.approx(50_000 - 1, abs=50)  # 1 used vs all 50,000


class Trickle(httpx.AsyncByteStream):
    """A body sent a few bytes at a time, `pause` apart; counts what was pulled."""

    def __init__(self, data: bytes, size: int, pause: float = 0.0) -> None:
        self.data, self.size, self.pause, self.sent = data, size, pause, 0

    async def __aiter__(self):
        for start in range(0, len(self.data), self.size):
            if self.pause:
                await asyncio.sleep(self.pause)
            self.sent += self.size
            yield self.data[start : start + self.size]


def test_an_answer_over_the_cap_is_malformed_and_never_read_whole():
    big = orjson.dumps({**OK_BODY, "content": [{"type": "text", "text": "x" * 200_000}]})
    streams: list[Trickle] = []

    def handler(request: httpx.Request) -> httpx.Response:
        streams.append(Trickle(big, 1000))
        return httpx.Response(200, stream=streams[-1])  # no content-length: counted

    client = echo_client(handler, max_answer_bytes=10_000)
    client.max_retries = 1
    result = asyncio.run(client.call(b"{}"))
    assert (result.answer, result.error_type, result.attempts) == (None, "malformed_answer", 2)
    assert "over 10,000 bytes" in (result.error_message or "")
    assert all(s.sent <= 11_000 for s in streams)  # the reading stopped at the cap


def test_a_declared_length_over_the_cap_is_refused_before_reading():
    big = orjson.dumps({**OK_BODY, "content": [{"type": "text", "text": "x" * 50_000}]})
    client = echo_client(lambda r: httpx.Response(200, content=big), max_answer_bytes=10_000)
    result = asyncio.run(client.call(b"{}"))
    assert result.error_type == "malformed_answer"
    assert f"{len(big):,} bytes declared" in (result.error_message or "")


def test_the_cap_counts_decompressed_bytes():
    import gzip

    big = orjson.dumps({**OK_BODY, "content": [{"type": "text", "text": " " * 1_000_000}]})
    packed = gzip.compress(big)
    assert len(packed) < 10_000

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=packed, headers={"content-encoding": "gzip"})

    result = asyncio.run(echo_client(handler, max_answer_bytes=100_000).call(b"{}"))
    assert result.error_type == "malformed_answer"


def test_an_answer_under_the_cap_is_read_whole():
    raw = orjson.dumps(OK_BODY)
    client = echo_client(
        lambda r: httpx.Response(200, stream=Trickle(raw, 7)), max_answer_bytes=len(raw)
    )
    assert asyncio.run(client.call(b"{}")).answer is not None


def test_a_trickling_answer_times_out_at_the_attempts_deadline():
    import time

    raw = orjson.dumps(OK_BODY)
    client = echo_client(lambda r: httpx.Response(200, stream=Trickle(raw, 1, pause=0.02)))
    client.deadline_s = 0.3  # the whole body would take len(raw) * 0.02 s, about 3 s
    started = time.monotonic()
    result = asyncio.run(client.call(b"{}"))
    took = time.monotonic() - started
    assert (result.answer, result.error_type) == (None, "timeout")
    assert "did not complete within 0.3 s" in (result.error_message or "")
    assert took < 1.5


def test_a_streamed_attempt_gets_the_longer_deadline():
    raw = orjson.dumps(OK_BODY)
    client = echo_client(lambda r: httpx.Response(200, stream=Trickle(raw, 20, pause=0.02)))
    client.deadline_s, client.stream_deadline_s = 0.1, 10.0  # the body takes about 0.3 s
    assert asyncio.run(client.call(b"{}")).error_type == "timeout"
    assert asyncio.run(client.call(b"{}", stream=True)).answer is not None


def test_a_stop_ends_a_retry_wait_at_once_and_the_attempt_is_not_sent() -> None:
    from pipeline.send.client import NotSent

    async def scenario() -> tuple[float, int]:
        script = Script(error(429, "rate_limit_error", {"retry-after": "20"}))
        transport = HttpxTransport(transport=httpx.MockTransport(script))
        client = ApiClient(
            transport, "http://api.test/v1/messages", {}, Limiter(concurrency=4), max_retries=3
        )
        call = asyncio.ensure_future(client.call(b"{}"))
        await asyncio.sleep(0.2)  # the 429 is in; the call now waits 20 s to retry
        started = asyncio.get_running_loop().time()
        client.halt()
        with pytest.raises(NotSent):
            await call
        return asyncio.get_running_loop().time() - started, script.calls

    waited, calls = asyncio.run(scenario())
    assert waited < 1.0 and calls == 1  # not 20 s, and nothing sent after the stop


def test_a_request_the_server_never_admits_gives_up_after_a_bounded_number_of_429s() -> None:
    script = Script(*[error(429, "rate_limit_error", {"retry-after": "0.001"})] * 200)
    clock = FakeTime()
    client = ApiClient(
        HttpxTransport(transport=httpx.MockTransport(script)),
        "http://api.test/v1/messages",
        {},
        Limiter(concurrency=4, clock=clock.clock, sleep=clock.sleep),
        max_retries=2,
        clock=clock.clock,
        sleep=clock.sleep,
    )
    result = asyncio.run(client.call(b"{}"))
    assert result.error_type == "rate_limit_error" and result.attempts == 40
    assert "still refused after 40 attempts" in (result.error_message or "")


@pytest.mark.parametrize("waiting_for", ["the limiter", "a retry"])
@pytest.mark.parametrize(
    ("cancelled_too", "ends_as"), [(False, "NotSent"), (True, "CancelledError")]
)
def test_a_stop_ends_a_wait_as_not_sent_and_a_cancel_with_it_as_a_cancel(
    waiting_for: str, cancelled_too: bool, ends_as: str
) -> None:
    # A stop alone: the call gives up unsent, and its caller goes on to its next row. Two
    # Ctrl-Cs the run hears in one turn of its loop (as a Ray worker hears them): the first
    # halts the client, the second cancels its calls; the call must end cancelled, as its
    # caller asked. As NotSent its worker would carry on, waiting for rows no one feeds.
    async def scenario() -> BaseException:
        limiter = Limiter(concurrency=1)
        script = Script(error(429, "rate_limit_error", {"retry-after": "20"}))
        transport = HttpxTransport(transport=httpx.MockTransport(script))
        client = ApiClient(transport, "http://api.test/v1/messages", {}, limiter, max_retries=3)
        if waiting_for == "the limiter":
            await limiter.acquire()  # the one slot taken: the call waits for it
        call = asyncio.ensure_future(client.call(b"{}"))
        await asyncio.sleep(0.2)  # the call waits (for the slot, or 20 s to retry the 429)
        client.halt()
        if cancelled_too:
            call.cancel()
        with pytest.raises(BaseException) as ended:
            await call
        return ended.value

    assert type(asyncio.run(scenario())).__name__ == ends_as
