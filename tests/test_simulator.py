"""The simulator: pure parts with an injected clock, then real HTTP against child processes."""

from __future__ import annotations

import asyncio
import hashlib
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import polars as pl
import pytest

from pipeline.simulator.answers import (
    Prompt,
    ToolSpec,
    cut_text,
    find_choices,
    generate,
    guess_label,
    parse_directives,
    tool_use_block,
)
from pipeline.simulator.buckets import RateLimiter, TokenBucket, retry_after_header
from pipeline.simulator.config import SimConfig, config_from_args, config_to_argv, flag_parser
from pipeline.simulator.process import SimulatorProcess
from pipeline.simulator.protocol import CachePrefix, ParsedRequest, PromptCache
from pipeline.simulator.server import main
from pipeline.tokens import estimate_tokens

MODEL = "claude-haiku-4-5-20251001"
LABEL_PROMPT = "Review: {review}\nAnswer with one word: positive, negative or neutral."
SAMPLE_REVIEWS = Path(__file__).resolve().parents[1] / "sample_data" / "reviews.csv"
SAMPLE_PROMPT = "Review of {product}: {text}\nAnswer with one word: positive, negative or neutral."
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def prompt_of(text: str, **fields: Any) -> Prompt:
    return Prompt(
        model=MODEL,
        system=(),
        messages=(("user", text),),
        max_tokens=fields.pop("max_tokens", 256),
        last_user_text=text,
        **fields,
    )


# ---------------------------------------------------------------- answers


def test_same_prompt_same_answer_and_seed_matters() -> None:
    prompt = prompt_of("Tell me about token buckets.")
    assert generate(prompt, seed=1) == generate(prompt, seed=1)
    texts = {generate(prompt, seed=seed).blocks[0]["text"] for seed in range(5)}
    assert len(texts) > 1


@pytest.mark.parametrize(
    ("review", "label"),
    [
        ("I love this kettle, it works great and feels sturdy. Highly recommend!", "positive"),
        ("Broke after two days. Total waste of money, I want a refund.", "negative"),
        ("Looked great at first, but it stopped working after a week.", "negative"),
        ("I wouldn't recommend it. Cheap plastic, disappointed.", "negative"),
        ("It arrived on Tuesday in a box.", "neutral"),
        ("Not bad at all, perfect for my small kitchen.", "positive"),
    ],
)
def test_guess_label_on_obvious_reviews(review: str, label: str) -> None:
    assert guess_label(review, ["positive", "negative", "neutral"], seed=0) == label
    answer = generate(prompt_of(LABEL_PROMPT.format(review=review)), seed=0)
    assert answer.blocks[0]["text"] == label


def test_guess_label_scores_other_choices_by_mentions_and_breaks_ties_by_seed() -> None:
    text = "The election results came in; politics dominated the evening news."
    assert guess_label(text, ["sports", "politics", "tech"], seed=0) == "politics"
    picks = {guess_label("nothing to go on", ["alpha", "beta"], seed) for seed in range(20)}
    assert picks == {"alpha", "beta"}
    assert guess_label("nothing", ["alpha", "beta"], 3) == guess_label(
        "nothing", ["alpha", "beta"], 3
    )


def test_guess_label_is_a_plausible_classifier_on_the_sample_reviews() -> None:
    """Right on most of the sample set, as a word list should be, but not on all of it."""
    reviews = pl.read_csv(SAMPLE_REVIEWS)
    labels = [
        generate(prompt_of(SAMPLE_PROMPT.format(**row)), seed=0).blocks[0]["text"]
        for row in reviews.iter_rows(named=True)
    ]
    right = sum(map(str.__eq__, labels, reviews["gold_label"]))
    assert 0.7 <= right / reviews.height <= 0.95


@pytest.mark.parametrize(
    ("prompt", "choices"),
    [
        ("Classify the topic (one of: sports, politics, tech).", ["sports", "politics", "tech"]),
        (
            "Answer with one word: positive, negative or neutral.",
            ["positive", "negative", "neutral"],
        ),
        ("Is this message spam or ham?", ["spam", "ham"]),
        ("Pick a colour red, green or blue", ["red", "green", "blue"]),
        ("Review: I loved it, works great", None),
        ("Write a poem about the sea.", None),
    ],
)
def test_find_choices(prompt: str, choices: list[str] | None) -> None:
    found = find_choices(prompt)
    assert (found[0] if found else None) == choices


def test_cut_text_honours_max_tokens_and_stop_sequences() -> None:
    text = "alpha beta gamma delta epsilon"
    assert cut_text(text, 100, []) == (text, "end_turn", None)
    cut, reason, _ = cut_text(text, 3, [])
    assert (cut, reason) == (text[:12], "max_tokens")
    assert estimate_tokens(cut) == 3
    assert cut_text(text, 100, ["delta", "beta"]) == ("alpha ", "stop_sequence", "beta")
    assert cut_text("añññññ", 1, []) == ("añ", "max_tokens", None)  # never half a character


def test_tool_input_follows_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "stars": {"type": "integer", "minimum": 1, "maximum": 5},
            "score": {"type": "number"},
            "verified": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "meta": {"type": "object", "properties": {"lang": {"type": "string"}}},
        },
    }
    tool = ToolSpec("record_label", "", schema)
    prompt = prompt_of("Review: terrible, it broke", tools=(tool,), forced_tool="record_label")
    answer = generate(prompt, seed=0)
    (block,) = answer.blocks
    assert answer.stop_reason == "tool_use"
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    value = block["input"]
    assert value["sentiment"] == "negative"
    assert 1 <= value["stars"] <= 5 and isinstance(value["stars"], int)
    assert isinstance(value["score"], float) and isinstance(value["verified"], bool)
    assert 1 <= len(value["tags"]) <= 3 and isinstance(value["meta"]["lang"], str)
    assert answer.output_tokens == estimate_tokens(orjson.dumps(value).decode())
    _, reason, tokens = tool_use_block(tool, prompt, b"\0" * 32, 0, room=2)
    assert (reason, tokens) == ("max_tokens", 2)


def test_thinking_comes_first_and_counts_as_output() -> None:
    answer = generate(prompt_of("Why?", max_tokens=2000, thinking_budget=1024), seed=0)
    thinking, text = answer.blocks
    assert thinking["type"] == "thinking" and thinking["signature"]
    expected = estimate_tokens(thinking["thinking"]) + estimate_tokens(text["text"])
    assert answer.output_tokens == expected


def test_parse_directives() -> None:
    directives = parse_directives("x [[sim:reply=Hello, world]] [[sim:fail_first=2]] y")
    assert directives.reply == "Hello, world" and directives.fail_first == 2
    assert parse_directives("[[sim:status=529]][[sim:unknown_block]]").status == 529
    assert parse_directives("[[sim:unknown_block]]").unknown_block
    assert parse_directives("plain text") == parse_directives("")


# ---------------------------------------------------------------- buckets and cache


def test_bucket_refills_continuously_up_to_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(per_minute=60, burst_s=5, clock=clock)  # 1 a second, holds 5
    assert bucket.capacity == 5 and bucket.remaining() == 5
    bucket.take(5)
    assert bucket.wait_s(2) == pytest.approx(2.0)
    clock.now += 1.5
    assert bucket.remaining() == 1 and bucket.wait_s(2) == pytest.approx(0.5)
    clock.now += 100
    assert bucket.remaining() == 5 and bucket.seconds_until_full() == 0


def test_oversized_request_fits_a_full_bucket_then_drives_it_negative() -> None:
    clock = FakeClock()
    bucket = TokenBucket(per_minute=600, burst_s=1, clock=clock)  # holds 10
    assert bucket.wait_s(25) == 0
    bucket.take(25)
    assert bucket.level() == -15 and bucket.wait_s(1) == pytest.approx(1.6)


def test_limiter_is_all_or_nothing_and_gives_back_unused_output() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, itpm=6000, otpm=600, burst_s=10, clock=clock)
    # capacities: 10 requests, 1000 input tokens, 100 output tokens
    assert limiter.try_acquire(input_tokens=400, max_output_tokens=100).admitted
    refused = limiter.try_acquire(input_tokens=400, max_output_tokens=100)
    assert not refused.admitted and refused.retry_after_s == pytest.approx(10.0)
    assert limiter.buckets["requests"].remaining() == 9  # nothing taken by the refusal
    assert limiter.buckets["input-tokens"].remaining() == 600
    limiter.settle(reserved_output_tokens=100, actual_output_tokens=30)
    assert limiter.buckets["output-tokens"].remaining() == 70
    assert limiter.try_acquire(input_tokens=400, max_output_tokens=60).admitted


def test_limiter_headers() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=60, itpm=None, otpm=600, burst_s=10, clock=clock)
    limiter.try_acquire(0, 50)
    headers = limiter.headers(now=0.0)
    assert headers["anthropic-ratelimit-requests-limit"] == "60"
    assert headers["anthropic-ratelimit-requests-remaining"] == "9"
    assert headers["anthropic-ratelimit-requests-reset"] == "1970-01-01T00:00:01Z"
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "50"
    assert headers["anthropic-ratelimit-tokens-reset"] == "1970-01-01T00:00:05Z"
    assert "anthropic-ratelimit-input-tokens-limit" not in headers
    assert retry_after_header(0.01) == "1" and retry_after_header(2.2) == "3"


def test_prompt_cache_creates_reads_and_expires() -> None:
    clock = FakeClock()
    cache = PromptCache(clock)
    prefix = CachePrefix(b"k", tokens=100, ttl="5m")
    request = ParsedRequest(prompt_of("hi"), input_tokens=130, cache_prefix=prefix)
    first = cache.plan(request)
    assert (first.input_tokens, first.cache_creation_input_tokens, first.cache_5m_tokens) == (
        30,
        100,
        100,
    )
    cache.commit(prefix)
    clock.now += 299
    assert cache.plan(request).cache_read_input_tokens == 100
    cache.commit(prefix)  # a read refreshes the lifetime
    clock.now += 299
    assert cache.plan(request).cache_read_input_tokens == 100
    clock.now += 301
    assert cache.plan(request).cache_creation_input_tokens == 100


def test_flags_round_trip_and_missing_key_variable() -> None:
    config = SimConfig(rpm=50, itpm=30000, fail_rate=0.2, fail_drop=0.1, ledger_path="x.jsonl")
    assert config_from_args(flag_parser().parse_args(config_to_argv(config))) == config
    assert main(["--require-key-env", "SIM_TEST_SURELY_UNSET_VARIABLE"]) == 2
    with pytest.raises(ValueError, match="add up to at most 1"):
        SimConfig(fail_rate=0.8, fail_500=0.5)


# ---------------------------------------------------------------- over HTTP


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return orjson.loads(self.text)


def post(base_url: str, body: Any, path: str = "/v1/messages", **headers: str) -> Reply:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    request = urllib.request.Request(base_url + path, data=data, method="POST")
    request.add_header("content-type", "application/json")
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    try:
        with NO_PROXY.open(request, timeout=10) as response:
            return Reply(response.status, _lower(response.headers), response.read().decode())
    except urllib.error.HTTPError as error:
        return Reply(error.code, _lower(error.headers), error.read().decode())


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def message(text: str, max_tokens: int = 64, **fields: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
        **fields,
    }


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        events.append((lines["event"], orjson.loads(lines["data"])))
    return events


@pytest.fixture(scope="module")
def ledger_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim") / "ledger.jsonl"


@pytest.fixture(scope="module")
def sim(ledger_file: Path) -> Any:
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
    body = message(
        "Review: perfect, I love it", tools=[tool], tool_choice={"type": "tool", "name": "label"}
    )
    reply = post(sim.base_url, body).json
    assert reply["stop_reason"] == "tool_use"
    assert reply["content"][0]["input"] == {"label": "positive"}


def test_prompt_cache_creation_then_read(sim: SimulatorProcess) -> None:
    prefix = f"You label reviews. {uuid.uuid4()} " + "Guidelines. " * 200
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
    cached = f"Shared instructions {uuid.uuid4()} " + "rule " * 100
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


def test_rate_limit_answers_429_with_retry_after_and_headers() -> None:
    with SimulatorProcess(rpm=6, burst_s=10) as limited:  # one request fits, then 1 per 10 s
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


def test_injected_faults_are_seeded_never_billed_and_drops_disconnect() -> None:
    with SimulatorProcess(fail_rate=0.6, seed=3) as faulty:
        bodies = [message(f"request {n}") for n in range(30)]
        first = asyncio.run(_outcomes(faulty.base_url, bodies))
        stats, ledger = faulty.stats(), faulty.ledger()
        faulty.reset()
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


def test_max_concurrency_and_latency() -> None:
    with SimulatorProcess(max_concurrency=2, latency_ms=600) as capped:
        results = asyncio.run(_concurrent(capped.base_url, 5))
        stats = capped.stats()
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 200, 429, 429, 429]
    refusal = next(body for status, body in results if status == 429)
    assert refusal["error"]["code"] == "rate_limit_exceeded"
    assert stats["max_in_flight"] == 2 and stats["billed"] == 2


def test_required_key() -> None:
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
