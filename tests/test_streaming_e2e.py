"""Long answers are streamed; a mid-stream error is retried like the HTTP error it names."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.providers.sse import StreamBroken, parse_stream
from tests.e2e import label_job

REPLY = "a long and careful answer, delivered in many small pieces over the stream"


def run_rows(cli, tmp_path, sim, texts, **sections):
    pl.DataFrame({"id": [f"s{i}" for i in range(len(texts))], "text": texts}).write_csv(
        tmp_path / "in.csv"
    )
    job = label_job(tmp_path, tmp_path / "in.csv", **sections)
    sim.reset()
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    return pl.read_parquet(tmp_path / "out" / "results.parquet")


def test_long_answers_stream_and_a_broken_stream_is_retried(tmp_path, sim, cli):
    texts = [
        f"[[sim:reply={REPLY}]] row {i}" + (" [[sim:stream_error_first=1]]" if i else "")
        for i in range(3)
    ]
    out = run_rows(
        cli,
        tmp_path,
        sim,
        texts,
        extract={"kind": "text", "choices": []},
        request={"prompt": "{text}", "max_tokens": 30_000},
    )
    assert out["status"].to_list() == ["ok"] * 3
    assert out["response_text"].to_list() == [REPLY] * 3  # assembled from the deltas
    assert out["attempts"].to_list() == [1, 2, 2]  # the broken streams were sent again
    assert out["stop_reason"].unique().to_list() == ["end_turn"]
    ledger = sim.ledger()
    assert sum(e["partial"] for e in ledger) == 2  # the broken ones were billed as sent
    complete = [e for e in ledger if not e["partial"]]
    assert sorted(out["output_tokens"].to_list()) == sorted(e["output_tokens"] for e in complete)


def test_a_stream_that_always_breaks_ends_as_an_error_row(tmp_path, sim, cli):
    out = run_rows(
        cli,
        tmp_path,
        sim,
        [f"[[sim:reply={REPLY}]] [[sim:stream_error_after=1]]"],
        extract={"kind": "text", "choices": []},
        request={"prompt": "{text}", "max_tokens": 30_000},
        limits={"max_retries": 2},
    )
    row = out.row(0, named=True)
    assert (row["status"], row["error_type"], row["attempts"]) == ("error", "overloaded_error", 3)
    assert "stream interrupted" in row["error_message"]


def test_streamed_tool_call_is_assembled_from_json_deltas(tmp_path, sim, cli):
    from tests.test_extract_e2e import TOOL

    out = run_rows(
        cli,
        tmp_path,
        sim,
        ["love it, works great"],
        extract={"kind": "tool", "choices": []},
        request={"tools": [TOOL], "max_tokens": 30_000},
    )
    row = out.row(0, named=True)
    assert row["label_status"] == "ok" and row["sentiment"] == "positive"


def test_parse_stream_errors():
    start = (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"m",'
        b'"usage":{"input_tokens":3}}}\n\n'
    )
    with pytest.raises(StreamBroken) as broken:
        parse_stream(
            start + b'event: error\ndata: {"type":"error","error":{"type":'
            b'"rate_limit_error","message":"slow down"}}\n\n'
        )
    assert (broken.value.status, broken.value.error_type) == (429, "rate_limit_error")
    with pytest.raises(StreamBroken) as cut:
        parse_stream(start)
    assert cut.value.status is None  # retried like a dropped connection


def test_parse_stream_survives_a_cut_tool_call_and_null_usage():
    raw = (
        b'event: message_start\ndata: {"type":"message_start","message":{"model":"m",'
        b'"usage":{"input_tokens":5000,"cache_read_input_tokens":20000}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"tool_use","name":"f","input":{}}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"input_json_delta","partial_json":"{\\"a\\": 1, \\"b"}}\n\n'
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
        b'"max_tokens"},"usage":{"output_tokens":9,"input_tokens":null,'
        b'"cache_read_input_tokens":null}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    answer = parse_stream(raw)
    assert answer.content[0]["input"] == '{"a": 1, "b'  # kept as text: the label is invalid
    assert (
        answer.usage.input_tokens,
        answer.usage.cache_read_input_tokens,
        answer.usage.output_tokens,
    ) == (5000, 20000, 9)
    assert answer.stop_reason == "max_tokens"
