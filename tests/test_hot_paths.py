"""The per-row shortcuts of the hot path give what the long way gives: each is checked
against an independent computation, and on the inputs where the shortcut must not apply."""

from __future__ import annotations

import random
from decimal import Decimal

import polars as pl
import pytest

from pipeline.errors import InputError
from pipeline.input.source import open_source
from pipeline.pricing import MILLION, Price, costs
from pipeline.providers.anthropic import parse_answer
from pipeline.providers.base import Usage
from pipeline.schema import ROW_INDEX
from pipeline.send.scrub import MARK, Scrubber
from pipeline.store.checkpoint import latest_outcomes

KEY = "sk-ant-api03-Zx9/Qq\"w'\\e"  # a slash, a quote and a backslash: JSON escapes them


def answer_of(body: str):
    return parse_answer(body.encode())


@pytest.mark.parametrize(
    "body",
    [
        '{"content": [{"type": "text", "text": "the key is KEY"}], "model": "m"}',
        '{"content": [{"type": "tool_use", "input": {"KEY": 1}}], "model": "m"}',
        '{"content": [{"type": "text", "text": "x"}], "model": "KEY"}',
        '{"content": [{"type": "text", "text": "x"}], "stop_reason": "KEY"}',
        '{"content": [{"type": "tool_use", "input": {"deep": ["a", "-KEY-"]}}]}',
    ],
)
def test_an_answer_holding_the_key_anywhere_is_scrubbed(body: str) -> None:
    import orjson

    spelled = orjson.dumps(KEY).decode()[1:-1]  # as JSON writes it inside a string
    answer = Scrubber(KEY).answer(answer_of(body.replace("KEY", spelled)))
    fields = (answer.text, answer.content_json, answer.model or "", answer.stop_reason or "")
    assert not any(KEY in f or spelled in f for f in fields)
    assert MARK in "".join(fields)


def test_a_key_spelled_by_unicode_escapes_is_scrubbed_after_parsing() -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    answer = Scrubber(KEY).answer(
        answer_of(f'{{"content": [{{"type": "text", "text": "{escaped}"}}]}}')
    )
    assert answer.text == MARK and KEY not in answer.content_json


def test_an_answer_without_the_key_is_returned_as_it_is() -> None:
    answer = answer_of('{"content": [{"type": "text", "text": "positive"}], "model": "m"}')
    assert Scrubber(KEY).answer(answer) is answer


PRICE = Price(
    input=Decimal("3"), output=Decimal("15"), cache_write_5m=Decimal("3.75"),
    cache_write_1h=Decimal("6"), cache_read=Decimal("0.30"),
)  # fmt: skip


def by_hand(usage: Usage, ttl: str | None) -> float:
    unsplit = usage.cache_creation_input_tokens - usage.cache_creation_5m_tokens
    unsplit -= usage.cache_creation_1h_tokens
    hour = usage.cache_creation_1h_tokens + (unsplit if ttl == "1h" else 0)
    five = usage.cache_creation_5m_tokens + (0 if ttl == "1h" else unsplit)
    total = (
        usage.input_tokens * Decimal(3) + usage.output_tokens * Decimal(15)
        + five * Decimal("3.75") + hour * Decimal(6)
        + usage.cache_read_input_tokens * Decimal("0.30")
    )  # fmt: skip
    return float(total / MILLION)


def test_costs_repeated_or_not_equal_the_sum_by_hand() -> None:
    rng = random.Random(7)
    for _ in range(300):
        writes = rng.choice([0, 0, 2048])
        usage = Usage(
            input_tokens=rng.randrange(1, 60), output_tokens=rng.randrange(1, 4),
            cache_creation_input_tokens=writes, cache_read_input_tokens=rng.choice([0, 900]),
        )  # fmt: skip
        for ttl in (None, "1h"):  # the same usage at another TTL is priced apart
            assert costs(PRICE, usage, ttl)["cost_usd"] == pytest.approx(
                by_hand(usage, ttl), rel=1e-12
            )


def write_ids(tmp_path, ids: list) -> object:
    path = tmp_path / "in.parquet"
    pl.DataFrame({"id": ids, "text": ["t"] * len(ids)}).write_parquet(path)
    return path


@pytest.mark.parametrize(
    "ids, rows",
    [
        (["a", "b", "b", "c"], (1, 2)),  # sorted: neighbours
        (["c", "b", "a", "b"], (1, 3)),  # unsorted: hashed
        ([1, 2, 3, 3], (2, 3)),
        ([1.0, 2.0, 2.0], (1, 2)),  # floats always go the hashing way
    ],
)
def test_a_duplicate_id_is_found_sorted_or_not(tmp_path, ids, rows) -> None:
    with pytest.raises(InputError, match=rf"in rows {rows[0]} and {rows[1]}"):
        open_source(write_ids(tmp_path, ids), "id")


@pytest.mark.parametrize(
    "ids", [["a", "b", "c"], [3, 2, 1], [float("nan"), 1.0], ["b", "a"], ["a"], []]
)
def test_unique_ids_pass(tmp_path, ids) -> None:
    assert open_source(write_ids(tmp_path, ids), "id").total_rows == len(ids)


def test_the_latest_outcome_of_each_row_matches_a_dictionary_of_last_writes() -> None:
    rng = random.Random(3)
    frames, expected = [], {}
    for part in range(6):
        rows = [rng.randrange(0, 200) for _ in range(rng.randrange(0, 120))]
        if part % 2:
            rows.sort()  # parts as runs write them (sorted), and not
        status = [f"s{part}-{i}" for i in range(len(rows))]
        frames.append(
            pl.LazyFrame(
                {ROW_INDEX: rows, "status": status}, schema_overrides={ROW_INDEX: pl.Int64}
            )
        )
        expected.update(zip(rows, status, strict=True))
    latest = latest_outcomes(frames)
    assert dict(zip(latest[ROW_INDEX], latest["status"], strict=True)) == expected
    assert latest.height == len(expected)


def random_usage(rng: random.Random) -> dict[str, object]:
    """Usage objects near the API's own shape: some plain, some with what only the careful
    path takes (floats, nulls, bools, gateways' names, unknown counts, a bad tier)."""
    values = [0, 1, 7, 2048, 2**63 - 1, 2**63, -1, 3.0, None, True, "12"]
    usage: dict[str, object] = {}
    for key in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                "cache_read_input_tokens"):  # fmt: skip
        if rng.random() < 0.85:
            usage[key] = rng.choice(values[:4]) if rng.random() < 0.85 else rng.choice(values)
    if rng.random() < 0.5:
        usage["cache_creation"] = {
            k: rng.choice(values[:4]) if rng.random() < 0.9 else rng.choice(values)
            for k in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
            if rng.random() < 0.8
        }
    if rng.random() < 0.5:
        usage["service_tier"] = rng.choice(["standard", "batch", None, 3])
    if rng.random() < 0.1:
        usage[rng.choice(["prompt_tokens_details", "server_tool_use", "cache_tokens_x"])] = 5
    return usage


def test_the_plain_usage_shortcut_equals_the_checked_reading():
    from pipeline.providers.anthropic import checked_usage, plain_usage
    from pipeline.providers.base import MalformedAnswer

    rng = random.Random(11)
    taken = 0
    for _ in range(5000):
        usage = random_usage(rng)
        plain = plain_usage(usage)
        if plain is None:
            continue
        taken += 1
        try:
            checked = checked_usage(usage)
        except MalformedAnswer:
            raise AssertionError(f"the shortcut took a usage the checks refuse: {usage}") from None
        assert plain == checked, usage
    assert taken > 1000  # the shortcut is the common case
