"""The simulator's pure parts: answers, the label guess, rate-limit buckets and the prompt cache.

Nothing here opens a socket; buckets and the cache run on an injected clock.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

from pipeline.input.tokens import estimate_tokens
from pipeline.simulator.answers import (
    Prompt,
    ToolSpec,
    cut_text,
    find_choices,
    generate,
    guess_label,
    judge_for,
    parse_directives,
    tool_use_block,
)
from pipeline.simulator.buckets import RateLimiter, TokenBucket, go_duration, retry_after_header
from pipeline.simulator.config import SimConfig, config_from_args, config_to_argv, flag_parser
from pipeline.simulator.messages import parse_request
from pipeline.simulator.outage import OutageWindow
from pipeline.simulator.prompt_cache import PromptCache
from pipeline.simulator.protocol import CachePrefix, ParsedRequest
from pipeline.simulator.server import main
from pipeline.simulator.streaming import StreamPlan, corrupt_event, garble, sse
from tests.simulator_helpers import LABEL_PROMPT, MODEL

SAMPLE_REVIEWS = Path(__file__).resolve().parents[1] / "sample_data" / "reviews.csv"
SAMPLE_PROMPT = "Review of {product}: {text}\nAnswer with one word: positive, negative or neutral."


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
    """Right on most of the sample set, as a word list should be, but not on all of it.

    The guess is the simulator's verdict: what a model of skill 1 answers (the models'
    profiles degrade from it, see test_simulator_profiles)."""
    reviews = pl.read_csv(SAMPLE_REVIEWS)
    flawless = ((MODEL, 1.0),)
    labels = [
        generate(prompt_of(SAMPLE_PROMPT.format(**row)), seed=0, skills=flawless).blocks[0]["text"]
        for row in reviews.iter_rows(named=True)
    ]
    right = sum(map(str.__eq__, labels, reviews["gold_label"]))
    assert 0.7 <= right / reviews.height <= 0.95


STATED = "After your answer, write on a last line of its own `Confidence: <0-100>`: how sure."


def stated_reply(text: str, *, stated: bool, temperature: float = 0.0, seed: int = 7) -> str:
    """The reply to a labelling request about `text`, sent (as the pipeline sends it) with or
    without the stated-confidence instruction as a second text block of the user message."""
    blocks = [{"type": "text", "text": LABEL_PROMPT.format(review=text)}]
    if stated:
        blocks.append({"type": "text", "text": STATED})
    body = {"model": MODEL, "max_tokens": 32, "temperature": temperature}
    parsed = parse_request({**body, "messages": [{"role": "user", "content": blocks}]})
    return str(generate(parsed.prompt, 0, rng=random.Random(seed)).blocks[0]["text"])


def test_a_stated_confidence_follows_the_label_only_when_asked() -> None:
    reviews = pl.read_csv(SAMPLE_REVIEWS)["text"].to_list()[:80]
    for review in reviews:
        plain, stated = stated_reply(review, stated=False), stated_reply(review, stated=True)
        label, line = stated.split("\n")
        assert label == plain and "Confidence" not in plain  # the instruction is not judged
        found = re.fullmatch(r"Confidence: (\d+)", line)
        assert found is not None and 0 <= int(found.group(1)) <= 100
        assert stated_reply(review, stated=True, seed=8) == stated  # fixed at temperature 0
    hot = {stated_reply(reviews[0], stated=True, temperature=1.0, seed=i) for i in range(20)}
    assert len(hot) > 1  # above 0 the confidence (and maybe the label) vary by request


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
    answer = generate(prompt, seed=0, skills=((MODEL, 1.0),))  # the enum is the verdict
    (block,) = answer.blocks
    assert answer.stop_reason == "tool_use"
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    value = block["input"]
    assert value["sentiment"] == "negative"
    assert 1 <= value["stars"] <= 5 and isinstance(value["stars"], int)
    assert isinstance(value["score"], float) and isinstance(value["verified"], bool)
    assert 1 <= len(value["tags"]) <= 3 and isinstance(value["meta"]["lang"], str)
    assert answer.output_tokens == estimate_tokens(orjson.dumps(value).decode())
    _, reason, tokens = tool_use_block(tool, prompt, b"\0" * 32, judge_for(prompt, 0), room=2)
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
    scripted = parse_directives("[[sim:corrupt_event_first=2]] [[sim:corrupt_event_at=-2]]")
    assert (scripted.corrupt_event_first, scripted.corrupt_event_at) == (2, -2)


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
    prefix = CachePrefix(b"k", tokens=5000, ttl="5m")  # above Haiku 4.5's 4,096
    request = ParsedRequest(prompt_of("hi"), input_tokens=5030, cache_prefixes=(prefix,))
    first = cache.plan(request)
    assert (first.usage.input_tokens, first.usage.cache_creation_input_tokens) == (30, 5000)
    assert first.usage.cache_5m_tokens == 5000
    cache.admit(first)
    assert cache.plan(request).usage.cache_event == "write"  # not readable until published
    cache.publish(first)
    clock.now += 299
    read = cache.plan(request)
    assert read.usage.cache_read_input_tokens == 5000
    cache.admit(read)  # a read refreshes the lifetime
    clock.now += 299
    assert cache.plan(request).usage.cache_read_input_tokens == 5000
    clock.now += 301
    assert cache.plan(request).usage.cache_creation_input_tokens == 5000


def test_flags_round_trip_and_missing_key_variable() -> None:
    config = SimConfig(
        rpm=50, itpm=30000, fail_rate=0.2, fail_drop=0.1, ledger_path="x.jsonl", cache_min_tokens=9
    )
    assert config_from_args(flag_parser().parse_args(config_to_argv(config))) == config
    pressure = SimConfig(
        max_concurrency=5, fail_corrupt_event=0.05, outage_after_s=30, outage_for_s=60
    )
    assert config_from_args(flag_parser().parse_args(config_to_argv(pressure))) == pressure
    flags = "--max-concurrency 5 --outage-after 30 --outage-for 60 --fail-corrupt-event 0.05"
    assert config_from_args(flag_parser().parse_args(flags.split())) == pressure
    with pytest.raises(ValueError, match="fail_corrupt_event"):
        SimConfig(fail_corrupt_event=1.5)
    with pytest.raises(ValueError, match="outage_for_s"):
        SimConfig(outage_for_s=-1)
    assert main(["--require-key-env", "SIM_TEST_SURELY_UNSET_VARIABLE"]) == 2
    with pytest.raises(ValueError, match="add up to at most 1"):
        SimConfig(fail_rate=0.8, fail_500=0.5)


def test_limiter_tokens_headers_are_the_tightest_combined_limit() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rpm=None, itpm=6000, otpm=600, burst_s=10, clock=clock)
    # capacities: 1000 input tokens, 100 output tokens
    for input_tokens, output_tokens in [(900, 1), (0, 90), (200, 5)]:
        assert limiter.try_acquire(input_tokens, output_tokens).admitted
        headers = limiter.headers(now=0.0)
        assert headers["anthropic-ratelimit-tokens-limit"] == "600"  # never the input's 6000
        input_left = int(headers["anthropic-ratelimit-input-tokens-remaining"])
        output_left = int(headers["anthropic-ratelimit-output-tokens-remaining"])
        combined_left = headers["anthropic-ratelimit-tokens-remaining"]
        assert combined_left == str(min(input_left, output_left))
        resets = [headers[f"anthropic-ratelimit-{n}-tokens-reset"] for n in ("input", "output")]
        assert headers["anthropic-ratelimit-tokens-reset"] == max(resets)
        openai = limiter.openai_headers()
        assert openai["x-ratelimit-limit-tokens"] == "600"
        assert openai["x-ratelimit-remaining-tokens"] == combined_left
        assert "x-ratelimit-limit-requests" not in openai  # no request limit configured
        clock.now += 0.5


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.0004, "0s"), (0.02, "20ms"), (1.5, "1.5s"), (8.64, "8.64s"), (360, "6m0s")],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_corrupt_event_garbles_exactly_one_event_never_the_last() -> None:
    frames = tuple(
        sse(name, {"type": name, "delta": {"text": f"piece {n}"}})
        for n, name in enumerate(["message_start"] + ["content_block_delta"] * 5 + ["message_stop"])
    )
    plan = StreamPlan(frames, output_tokens=10, partial=False)
    for at, expected in [(None, 3), (0, 0), (-2, 5), (-1, 5), (40, 5)]:
        corrupted = corrupt_event(plan, at)
        assert corrupted.corrupted_event == expected
        changed = [i for i, f in enumerate(corrupted.frames) if f != frames[i]]
        assert changed == [expected]
        data = corrupted.frames[expected].split(b"\ndata: ")[1]
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(data)
    assert garble(frames[1]).startswith(b"event: content_block_delta\ndata: {")
    kinds = ["thinking_delta"] * 6 + ["text_delta"] * 3
    deltas = [sse("content_block_delta", {"type": "x", "delta": {"type": k}}) for k in kinds]
    thinking = StreamPlan((frames[0], *deltas, frames[-1]), output_tokens=10, partial=False)
    assert corrupt_event(thinking).corrupted_event == 8  # the middle text delta, not thinking


def test_outage_window_starts_with_the_first_request() -> None:
    clock = FakeClock()
    window = OutageWindow(after_s=10, for_s=5, clock=clock)
    assert window.snapshot()["start_ts"] is None  # not armed before a request
    clock.now += 100
    assert not window.active()  # the first request, at t=0
    clock.now += 9.9
    assert not window.active()
    clock.now += 0.1
    assert window.active()
    clock.now += 4.9
    assert window.active()
    clock.now += 0.1
    assert not window.active()
    window.reset()  # re-armed: timed from the next request
    clock.now += 100
    assert not window.active()
    window.begin(for_s=1)
    assert window.active() and window.snapshot()["active"]
    assert not OutageWindow(after_s=0, for_s=0, clock=clock).active()
