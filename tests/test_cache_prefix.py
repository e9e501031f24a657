"""cache = "auto": where the breakpoint goes (prefix.py), and the warm-up gate (warmup.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pipeline.cache.prefix import CacheMarker, choose_ttl, pays, plan_cache, write_ttl
from pipeline.cache.warmup import WarmGate
from pipeline.errors import JobFileError
from pipeline.input.render import RequestRenderer
from pipeline.job.load import job_from_dict
from pipeline.pricing import load_price_table
from pipeline.providers.base import Usage

GUIDE = "Label guide. " * 2000  # ~6,500 tokens by the local estimate (4 bytes a token)
HAIKU = "claude-haiku-4-5-20251001"
CONTROL_5M = {"type": "ephemeral", "ttl": "5m"}


def make_job(request: dict[str, Any], overrides: dict[str, str] | None = None) -> Any:
    raw = {
        "job": {"input": "in.csv"},
        "request": {"model": HAIKU, "max_tokens": 8, "prompt": "Review: {text}", **request},
        "overrides": overrides or {},
    }
    return job_from_dict(raw)


def plan_of(job: Any, minimum: int = 4096) -> Any:
    return plan_cache(
        job.request, job.prompt, job.system, job.overrides, minimum=minimum, model=HAIKU, ttl="5m"
    )


def marked(job: Any, row: dict[str, Any], minimum: int = 4096) -> dict[str, Any]:
    body = RequestRenderer(job.request, job.prompt, job.system, job.overrides).render(row)
    result: dict[str, Any] = plan_of(job, minimum).mark(body)
    return result


def breakpoints(body: dict[str, Any]) -> int:
    count = sum(1 for t in body.get("tools") or [] if "cache_control" in t)
    system = body.get("system")
    if isinstance(system, list):
        count += sum(1 for b in system if "cache_control" in b)
    for message in body["messages"]:
        if isinstance(message["content"], list):
            count += sum(1 for b in message["content"] if "cache_control" in b)
    return count


ROW = {"text": "great kettle"}


def test_a_long_system_string_becomes_one_marked_block_with_the_same_text() -> None:
    body = marked(make_job({"system": GUIDE}), ROW)
    assert body["system"] == [{"type": "text", "text": GUIDE, "cache_control": CONTROL_5M}]
    assert body["messages"] == [{"role": "user", "content": "Review: great kettle"}]


def test_system_blocks_mark_the_last_shared_block() -> None:
    blocks = [{"type": "text", "text": GUIDE}, {"type": "text", "text": "Be brief."}]
    body = marked(make_job({"system": blocks}), ROW)
    assert body["system"][0] == {"type": "text", "text": GUIDE}
    assert body["system"][1]["cache_control"] == CONTROL_5M
    assert breakpoints(body) == 1


def test_a_system_block_with_a_column_is_shared_up_to_it_and_split_there() -> None:
    job = make_job({"system": GUIDE + "Product: {product}"})
    body = marked(job, {**ROW, "product": "kettle"})
    head, rest = body["system"]
    assert head == {"type": "text", "text": GUIDE + "Product: ", "cache_control": CONTROL_5M}
    assert rest == {"type": "text", "text": "kettle"}
    assert head["text"] + rest["text"] == GUIDE + "Product: kettle"  # the text, exactly


def test_tools_alone_are_a_prefix() -> None:
    tool = {"name": "label", "description": GUIDE, "input_schema": {"type": "object"}}
    body = marked(make_job({"tools": [tool]}), ROW)
    assert body["tools"][-1]["cache_control"] == CONTROL_5M
    assert "system" not in body


def test_the_prompt_head_extends_the_prefix_when_it_is_long() -> None:
    job = make_job({"prompt": GUIDE + "Review: {text}"})
    body = marked(job, ROW)
    head, rest = body["messages"][0]["content"]
    assert head == {"type": "text", "text": GUIDE + "Review: ", "cache_control": CONTROL_5M}
    assert rest == {"type": "text", "text": "great kettle"}


@pytest.mark.parametrize("cell", ["", "  ", "\n"])
def test_a_row_whose_rest_would_be_only_whitespace_is_sent_whole(cell: str) -> None:
    job = make_job({"prompt": GUIDE + "Review: {text}\n"})
    body = marked(job, {"text": cell})
    assert body["messages"][0]["content"] == GUIDE + "Review: " + cell + "\n"  # not split
    job = make_job({"system": GUIDE + "Product: {product}"})
    assert marked(job, {**ROW, "product": cell})["system"] == GUIDE + "Product: " + cell


def test_a_short_prompt_head_leaves_the_prompt_whole_and_marks_the_system() -> None:
    body = marked(make_job({"system": GUIDE, "prompt": "Review: {text}"}), ROW)
    assert body["messages"][0]["content"] == "Review: great kettle"
    assert body["system"][0]["cache_control"] == CONTROL_5M


def test_a_column_at_the_very_start_shares_nothing() -> None:
    plan = plan_of(make_job({"prompt": "{text} is the review."}))
    assert not plan.active and "share no prefix" in plan.reason


def test_a_per_row_system_override_ends_the_prefix_before_the_system() -> None:
    job = make_job({"system": GUIDE}, overrides={"system": "sys_col"})
    plan = plan_of(job)
    assert not plan.active  # no tools, and the system differs per row


def test_below_the_minimum_nothing_is_marked_and_the_reason_says_so() -> None:
    job = make_job({"system": "Short guide. " * 250})  # ~800 tokens
    plan = plan_of(job)
    assert not plan.active
    assert "below the 4,096 that claude-haiku-4-5-20251001 caches" in plan.reason
    body = marked(job, ROW)
    assert breakpoints(body) == 0 and body["system"] == "Short guide. " * 250


def test_the_users_breakpoints_are_kept_and_never_a_fifth() -> None:
    tools = [
        {"name": f"t{i}", "input_schema": {"type": "object"}, "cache_control": CONTROL_5M}
        for i in range(4)
    ]
    job = make_job({"system": GUIDE, "tools": tools})
    plan = plan_of(job)
    assert not plan.active and "4 breakpoints" in plan.reason
    assert breakpoints(marked(job, ROW)) == 4
    own = [{"type": "text", "text": GUIDE, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    body = marked(make_job({"system": own}), ROW)
    assert body["system"] == own  # the user's own breakpoint, as it is


@pytest.mark.parametrize(
    ("batch", "rpm", "ttl"),
    [(False, None, "5m"), (False, 600.0, "5m"), (False, 0.2, "1h"), (True, None, "1h")],
)
def test_ttl_is_one_hour_when_reuses_may_come_more_than_four_minutes_apart(
    batch: bool, rpm: float | None, ttl: str
) -> None:
    assert choose_ttl(batch=batch, requests_per_minute=rpm)[0] == ttl


@pytest.mark.parametrize(
    ("ttl", "rows", "expected"),
    [("5m", 1, False), ("5m", 2, True), ("1h", 2, False), ("1h", 3, True)],
)
def test_a_write_pays_only_when_enough_rows_read_it(ttl: str, rows: int, expected: bool) -> None:
    assert pays(ttl, rows) is expected


def test_each_model_of_an_override_gets_its_own_plan_said_once() -> None:
    said: list[str] = []
    job = make_job({"system": GUIDE}, overrides={"model": "model_col"})
    marker = CacheMarker(job, load_price_table(), batch=False, rows=100, say=said.append)
    _, key = marker.mark({"model": HAIKU, "system": GUIDE, "messages": []})
    _, key2 = marker.mark({"model": "claude-sonnet-4-6", "system": GUIDE, "messages": []})
    marker.mark({"model": HAIKU, "system": GUIDE, "messages": []})
    assert (key, key2) == (HAIKU, "claude-sonnet-4-6")
    assert len(said) == 2 and all(line.startswith("cache: ") for line in said)


def test_cache_must_be_off_or_auto(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match=r"\[request\] cache: .*off.*auto"):
        make_job({"cache": "sometimes"})


def test_the_gate_sends_one_warmer_then_everyone_after_its_answer() -> None:
    async def scenario() -> list[str]:
        now = [0.0]
        gate = WarmGate("5m", clock=lambda: now[0])
        events: list[str] = []

        async def request(name: str) -> None:
            warmer = await gate.enter("m")
            events.append(f"{name} {'warms' if warmer else 'reads'}")
            await asyncio.sleep(0)
            gate.done("m", warmer=warmer, answered=True)

        await asyncio.gather(*(request(f"r{i}") for i in range(5)))
        now[0] += 400.0  # longer than the TTL: warm again
        await asyncio.gather(*(request(f"s{i}") for i in range(3)))
        return events

    events = asyncio.run(scenario())
    assert events[0] == "r0 warms" and all("reads" in e for e in events[1:5])
    assert events[5].endswith("warms") and all("reads" in e for e in events[6:])


def test_a_warmup_without_an_answer_hands_the_role_to_the_next_request() -> None:
    async def scenario() -> list[bool]:
        gate = WarmGate("5m", clock=lambda: 0.0)
        roles: list[bool] = []

        async def request(answered: bool) -> None:
            warmer = await gate.enter("m")
            roles.append(warmer)
            await asyncio.sleep(0)
            gate.done("m", warmer=warmer, answered=answered)

        await asyncio.gather(request(False), request(True), request(True))
        return roles

    assert asyncio.run(scenario()) == [True, True, False]


# --- TTLs: the API's order, and the TTL writes are priced at -----------------------------

CONTROL_1H = {"type": "ephemeral", "ttl": "1h"}


def plan_with(job: Any, ttl: str) -> Any:
    return plan_cache(
        job.request, job.prompt, job.system, job.overrides, minimum=4096, model=HAIKU, ttl=ttl
    )


def test_no_one_hour_breakpoint_after_the_jobs_own_five_minute_one() -> None:
    own = [{"type": "text", "text": "Rules.", "cache_control": CONTROL_5M},
           {"type": "text", "text": GUIDE}]  # fmt: skip
    job = make_job({"system": own})
    plan = plan_with(job, "1h")  # batch mode's TTL
    assert not plan.active and "own 5m breakpoint comes before" in plan.reason
    body = RequestRenderer(job.request, job.prompt, job.system, job.overrides).render(ROW)
    assert plan.mark(body) is body  # the request the API would refuse is never made
    assert plan_with(job, "5m").active  # the same TTL after it is in order


def test_a_five_minute_breakpoint_goes_only_where_no_longer_one_follows() -> None:
    own = [{"type": "text", "text": "Rules.", "cache_control": CONTROL_1H},
           {"type": "text", "text": GUIDE}]  # fmt: skip
    body = marked(make_job({"system": own}), ROW)  # 1h first, then auto's 5m: in order
    assert [b.get("cache_control") for b in body["system"]] == [CONTROL_1H, CONTROL_5M]
    automatic = make_job({"system": GUIDE, "cache_control": CONTROL_1H})  # on the last block
    plan = plan_with(automatic, "5m")
    assert not plan.active and "own 1h breakpoint comes after" in plan.reason


def test_writes_are_priced_at_the_ttl_the_jobs_requests_ask_for() -> None:
    guide = make_job({"system": GUIDE})
    batch = CacheMarker(guide, load_price_table(), batch=True, rows=100, say=lambda _: None)
    assert write_ttl(guide, batch, HAIKU) == "1h"  # auto marks batches with the hour
    online = CacheMarker(guide, load_price_table(), batch=False, rows=100, say=lambda _: None)
    assert write_ttl(guide, online, HAIKU) == "5m"
    assert write_ttl(guide, None, HAIKU) is None  # no breakpoint at all
    own = [{"type": "text", "text": GUIDE, "cache_control": CONTROL_1H}]
    assert write_ttl(make_job({"system": own}), None, HAIKU) == "1h"
    short = make_job({"system": "Rules."})  # nothing long enough to mark: auto adds none
    batch = CacheMarker(short, load_price_table(), batch=True, rows=100, say=lambda _: None)
    assert write_ttl(short, batch, HAIKU) is None


# --- what the API did with the cache is said from its answer, not assumed ----------------


def test_the_plan_says_marked_and_the_first_answer_says_what_the_api_did() -> None:
    said: list[str] = []
    job = make_job({"system": GUIDE}, overrides={"model": "model_col"})
    marker = CacheMarker(job, load_price_table(), batch=False, rows=100, say=said.append)
    marker.mark({"model": HAIKU, "system": GUIDE, "messages": []})
    assert "marked for caching" in said[0] and "cached" not in said[0]
    marker.heard(HAIKU, Usage(input_tokens=6500, output_tokens=1))  # nothing written or read
    marker.heard(HAIKU, Usage(input_tokens=6500, output_tokens=1))  # said once
    assert len(said) == 2 and "the API wrote nothing to the cache" in said[1]
    assert "cached" not in said[1]
    sonnet = "claude-sonnet-4-6"
    marker.mark({"model": sonnet, "system": GUIDE, "messages": []})
    marker.heard(sonnet, Usage(input_tokens=9, output_tokens=1, cache_creation_input_tokens=6400))
    assert "wrote 6,400" in said[-1] and sonnet in said[-1]
    marker.heard("claude-opus-4-6", None)  # never marked: nothing to say
    assert len(said) == 4
