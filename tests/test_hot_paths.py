"""The per-row shortcuts of the hot path give what the long way gives: each is checked
against an independent computation, and on the inputs where the shortcut must not apply."""

from __future__ import annotations

import random
from dataclasses import replace
from decimal import Decimal
from urllib.parse import quote

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError
from pipeline.input.source import open_source, scan_rows
from pipeline.job.model import ExtractSpec
from pipeline.pricing import MILLION, Price, costs, split_writes
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


@pytest.mark.parametrize("seed", range(12))
def test_ids_are_refused_exactly_when_a_value_repeats(tmp_path, seed) -> None:
    """Sorted or not, text or integers, a repeat next to its twin or far from it: refused
    exactly when a set of the ids is smaller than the list (the check's one-pass shortcut
    for sorted ids agrees with counting them)."""
    rng = random.Random(seed)
    ids: list = rng.sample(range(10_000), rng.randrange(2, 300))
    if seed % 3 == 0:
        ids.append(rng.choice(ids))  # a repeat
    if seed % 2 == 0:
        ids.sort()
    if seed % 4 < 2:
        ids = [f"id-{i:05d}" for i in ids]
    path = write_ids(tmp_path, ids)
    if len(set(ids)) < len(ids):
        with pytest.raises(InputError, match="duplicate values"):
            open_source(path, "id")
    else:
        assert open_source(path, "id").total_rows == len(ids)


def write_rows(tmp_path, kind: str, rows: int):
    """An input of `rows` rows in format `kind`: ids r0000000..., a text per row."""
    frame = pl.DataFrame(
        {"id": [f"r{i:07d}" for i in range(rows)], "text": [f"text {i}" for i in range(rows)]}
    )
    path = tmp_path / f"in.{kind}"
    if kind == "parquet":
        frame.write_parquet(path, row_group_size=97)  # many row groups: a slice skips some
    elif kind == "csv":
        frame.write_csv(path)
    else:
        frame.write_ndjson(path)
    return path


@pytest.mark.parametrize("kind", ["parquet", "csv", "jsonl"])
@pytest.mark.parametrize("limit", [None, 700])
@pytest.mark.parametrize("done_share", [0.0, 0.3, 0.9, 0.999, 1.0])
def test_the_rows_left_to_send_are_those_not_done_within_only_and_limit(
    tmp_path, kind, limit, done_share
) -> None:
    """Most rows done (a resume near the end) goes by the few left, read from a slice of
    the input: the same rows as a set difference by hand, in input order, for each format."""
    rows = 1000
    rng = random.Random(f"{kind}{limit}{done_share}")
    done = [p for p in range(rows + 50) if rng.random() < done_share]  # some past the end
    source = open_source(write_rows(tmp_path, kind, rows), "id", limit=limit)
    skip = pl.Series(done, dtype=pl.Int64)
    for only in (None, [*sorted(rng.sample(range(rows), 40)), rows + 5]):
        only_series = None if only is None else pl.Series(only, dtype=pl.Int64)
        got = [r for b in source.batches(["text"], 64, skip, only_series) for r in b]
        scope = set(range(limit or rows)) - set(done)
        if only is not None:
            scope &= set(only)
        expected = sorted(scope)
        assert [r[ROW_INDEX] for r in got] == expected
        assert [r["id"] for r in got] == [f"r{p:07d}" for p in expected]
        assert [r["text"] for r in got] == [f"text {p}" for p in expected]


@pytest.mark.parametrize("via", ["batches", "frame_of", "a Ray read task"])
def test_a_resume_reads_the_rows_it_has_left_and_none_before_them(tmp_path, via) -> None:
    """The rows left are read from the first of them on: a row group before them, damaged
    here on purpose, is never read (a resume near the end, or a Ray read task of a range,
    reads its rows, not the whole input; polars hands the reader that slice only while the
    bare scan was never asked its columns)."""
    path = tmp_path / "in.parquet"
    texts = [f"review number {i}, long enough to fill a page " * 3 for i in range(10_000)]
    frame = pl.DataFrame({"id": [f"r{i:05d}" for i in range(10_000)], "text": texts})
    frame.write_parquet(path, row_group_size=1000)
    text = pq.read_metadata(path).row_group(0).column(1)  # the first 1,000 rows' texts
    data = bytearray(path.read_bytes())
    middle = text.data_page_offset + text.total_compressed_size // 3
    data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(pl.exceptions.ComputeError):
        pl.read_parquet(path, columns=["text"])  # the damage is there to be found
    source = open_source(path, "id")  # reads the ids only: intact
    left = pl.Series(range(9_000, 10_000), dtype=pl.Int64)
    if via == "batches":
        rows = [r for b in source.batches(["text"], skip=pl.Series(range(9_000))) for r in b]
    elif via == "frame_of":
        rows = source.frame_of(["text"], left).to_dicts()
    else:  # as ray/read.py's read_range reads its range
        rows = scan_rows(path, "id").slice(9_000, 1_000).collect().to_dicts()
    assert [r[ROW_INDEX] for r in rows] == left.to_list()
    assert [r["text"] for r in rows] == texts[9_000:]


def test_an_input_with_a_column_named_as_the_row_numbers_is_refused_by_name(tmp_path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(f"id,{ROW_INDEX},text\na,1,x\n")
    with pytest.raises(InputError, match=rf"has a column '{ROW_INDEX}'.*rename it"):
        open_source(path, "id")


def latest_equals_last_writes(parts: list[list[int | None]]) -> pl.DataFrame:
    """`latest_outcomes` of `parts` (positions, oldest part first; each outcome named by
    its part and place) against a dictionary of last writes."""
    frames, expected = [], {}
    for number, rows in enumerate(parts):
        status = [f"s{number}-{i}" for i in range(len(rows))]
        frames.append(
            pl.LazyFrame(
                {ROW_INDEX: rows, "status": status}, schema_overrides={ROW_INDEX: pl.Int64}
            )
        )
        expected.update(zip(rows, status, strict=True))
    latest = latest_outcomes(frames)
    assert dict(zip(latest[ROW_INDEX], latest["status"], strict=True)) == expected
    assert latest.height == len(expected)
    return latest


def test_the_latest_outcome_of_each_row_matches_a_dictionary_of_last_writes() -> None:
    rng = random.Random(3)
    parts: list[list[int | None]] = []
    for part in range(6):
        rows = [rng.randrange(0, 200) for _ in range(rng.randrange(0, 120))]
        if part % 2:
            rows.sort()  # parts as runs write them (sorted), and not
        parts.append(list(rows))
    latest_equals_last_writes(parts)


@pytest.mark.parametrize("seed", range(20))
def test_parts_apart_overlapping_or_repeating_rows_keep_each_rows_last_outcome(seed) -> None:
    """Parts of rows of their own, parts overlapping others (a part re-done), unsorted or
    empty parts, a row twice in one part, a row without a position: against a dictionary
    of last writes, and in row order."""
    rng = random.Random(seed)
    parts: list[list[int | None]] = []
    for part in range(rng.randrange(1, 9)):
        start = rng.choice([part * 100, rng.randrange(0, 800)])  # apart, or anywhere
        rows: list[int | None] = sorted(rng.sample(range(start, start + 100), rng.randrange(0, 60)))
        if rows and rng.random() < 0.2:
            rows.insert(rng.randrange(len(rows)), rng.choice(rows))  # a row twice
        if rng.random() < 0.2:
            rng.shuffle(rows)
        if seed % 7 == 6 and part in (1, 2):  # beside others, or alone
            rows = [*rows, None] if part == 1 else [None]
        parts.append(rows)
    positions = latest_equals_last_writes(parts)[ROW_INDEX].drop_nulls().to_list()
    assert positions == sorted(positions)


def test_outcomes_already_in_row_order_keep_the_last_of_a_repeated_row() -> None:
    """The path that finds them sorted and does not sort: a row repeated at the seam."""
    frames = [
        pl.LazyFrame({ROW_INDEX: rows, "status": status}, schema_overrides={ROW_INDEX: pl.Int64})
        for rows, status in (([0, 1, 2], ["a", "b", "old"]), ([2, 2, 3], ["mid", "new", "d"]))
    ]
    latest = latest_outcomes(frames)
    assert latest[ROW_INDEX].to_list() == [0, 1, 2, 3]
    assert latest["status"].to_list() == ["a", "b", "new", "d"]


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


def test_record_costs_kept_by_value_equal_the_costs_worked_out_each_time() -> None:
    from pipeline.labels.extract import Extractor
    from pipeline.pricing import PriceTable
    from pipeline.providers.base import Answer
    from pipeline.run.outcome import RecordBuilder
    from pipeline.schema import COST_COLUMNS

    table = PriceTable("t", {"m": PRICE, "n": replace(PRICE, input=Decimal("1"))}, {"a": "m"})
    spec = ExtractSpec(kind="text")
    records = RecordBuilder(["id"], Extractor(spec), table)
    rng = random.Random(5)
    for number in range(400):
        usage = Usage(
            input_tokens=rng.randrange(1, 6), output_tokens=rng.randrange(1, 3),
            cache_creation_input_tokens=rng.choice([0, 20]),
            cache_creation_5m_tokens=rng.choice([0, 0, 20]),
        )  # fmt: skip
        model = rng.choice(["m", "n", "a", "unpriced", None])
        answer = Answer("x", "[]", "end_turn", model, usage, [])
        record: dict = {}
        records._answered(record, answer, "m")
        price = table.lookup(model or "m", "m")
        split = split_writes(usage, None)
        expected = costs(price, split) if price is not None else dict.fromkeys(COST_COLUMNS)
        assert {c: record.get(c) for c in COST_COLUMNS} == expected, (number, model, usage)


def test_the_worst_case_depends_on_the_body_only_through_its_size_and_max_tokens() -> None:
    from pipeline.send.budget import Stake, nano_usd, worst_case_usd

    rng = random.Random(3)
    for _ in range(200):
        size, most = rng.randrange(10, 5000), rng.randrange(1, 9000)
        one, other = bytes(rng.randrange(256) for _ in range(size)), b"x" * size
        worst = worst_case_usd({"max_tokens": most}, one, PRICE)
        assert worst == worst_case_usd({"max_tokens": most, "other": 1}, other, PRICE)
        assert Stake(worst, None, None, held=False).nano == nano_usd(worst)


@pytest.mark.parametrize(
    "headers",
    [
        {"request-id": "req_1", "content-type": "application/json"},
        {"request-id": f"echo {KEY}", "x-other": "y"},
        {"location": f"https://x/?k={quote(KEY, safe='')}"},
        {"a": KEY[:5], "b": KEY[5:]},  # split across two values: nothing to scrub
    ],
)
def test_scrubbed_headers_equal_each_value_scrubbed(headers: dict) -> None:
    scrubber = Scrubber(KEY)
    assert scrubber.headers(headers) == {k: scrubber.text(v) for k, v in headers.items()}


@pytest.mark.parametrize(
    "headers",
    [
        {"anthropic-ratelimit-requests-limit": "50"},
        {"llm_provider-anthropic-ratelimit-requests-limit": "50", "x": "1"},
        {"x-llm_provider-anthropic-ratelimit-requests-limit": "50"},  # inside, not a prefix
    ],
)
def test_rate_limit_headers_shortcut_equals_the_long_way(headers: dict) -> None:
    from pipeline.send.ratelimit_headers import PASSED_ON_PREFIXES, rate_limit_headers

    passed_on = {
        name[len(prefix) :]: value
        for name, value in headers.items()
        for prefix in PASSED_ON_PREFIXES
        if name.startswith(prefix)
    }
    assert rate_limit_headers(headers) == {**passed_on, **headers}


def test_a_session_s_own_headers_are_merged_as_aiohttp_merges_a_request_s() -> None:
    from pipeline.send.transport import _merged

    merged = _merged({"Accept-Encoding": "identity", "x-api-key": "k"})
    assert sorted(merged.items()) == [("Accept-Encoding", "identity"), ("x-api-key", "k")]
    assert dict(_merged({"a": "1"})) == {"accept-encoding": "gzip, deflate", "a": "1"}
