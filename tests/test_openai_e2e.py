"""`format = "openai"`: /v1/chat/completions end to end, usage mapped into the same columns."""

from __future__ import annotations

from decimal import Decimal

import polars as pl
import pytest

from pipeline.providers import openai
from tests.e2e import label_job
from tests.test_run_e2e import reviews


def test_openai_format_end_to_end_with_exact_usage_mapping(tmp_path, cli, sim):
    reviews(tmp_path / "in.csv", 12)
    system = [
        {
            "type": "text",
            "text": "You label reviews carefully. "
            * 600,  # above the 4,096 tokens Haiku 4.5 caches
            "cache_control": {"type": "ephemeral"},
        }
    ]
    job = label_job(
        tmp_path,
        tmp_path / "in.csv",
        api={"format": "openai"},
        request={"system": system},
        limits={"concurrency": 1},
    )
    done = cli("run", str(job), "--base-url", sim.base_url)
    ledger = {entry["request_id"]: entry for entry in sim.ledger()}
    assert done.returncode == 0, done.stderr
    assert {e["endpoint"] for e in ledger.values()} == {"/v1/chat/completions"}
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["status"].unique().to_list() == ["ok"]
    assert set(out["label"]) <= {"positive", "negative", "neutral"}
    assert out["stop_reason"].unique().to_list() == ["end_turn"]  # finish_reason "stop"
    assert out["cache_read_input_tokens"].max() > 0  # the system prompt was cached
    for row in out.iter_rows(named=True):
        billed = ledger[row["request_id"]]
        # prompt_tokens - cached_tokens is input (cache writes included: the chat format does
        # not tell them apart), cached_tokens is cache read, completion_tokens is output
        assert row["input_tokens"] == billed["input_tokens"] + billed["cache_creation_input_tokens"]
        assert row["cache_read_input_tokens"] == billed["cache_read_input_tokens"]
        assert row["output_tokens"] == billed["output_tokens"]
        exact = (
            Decimal(row["input_tokens"]) * 1
            + Decimal(row["output_tokens"]) * 5
            + Decimal(row["cache_read_input_tokens"]) * Decimal("0.1")
        ) / 10**6
        assert row["cost_usd"] == float(exact)
    report = cli("report", str(tmp_path / "out"))
    assert report.returncode == 0 and "TOTAL" in report.stdout


def test_forced_tool_becomes_a_function_call_and_typed_columns(tmp_path, cli, sim):
    from tests.test_extract_e2e import TOOL

    pl.DataFrame({"id": ["a", "b"], "text": ["love it", "broke, awful"]}).write_csv(
        tmp_path / "in.csv"
    )
    job = label_job(
        tmp_path,
        tmp_path / "in.csv",
        api={"format": "openai"},
        extract={"kind": "tool", "choices": []},
        request={"tools": [TOOL], "max_tokens": 200},
    )
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["label_status"].to_list() == ["ok", "ok"]
    assert out["sentiment"].to_list() == ["positive", "negative"]
    assert out["stop_reason"].to_list() == ["tool_use", "tool_use"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
        ({"type": "any"}, "required"),
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
    ],
)
def test_tool_choice_translation(choice, expected):
    body = openai.body(
        {
            "model": "m",
            "max_tokens": 5,
            "tool_choice": choice,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    assert body["tool_choice"] == expected


def test_body_translation_keeps_sampling_and_drops_what_chat_lacks():
    body = openai.body(
        {
            "model": "m",
            "max_tokens": 5,
            "system": "be brief",
            "temperature": 0.2,
            "top_p": 0.9,
            "top_k": 5,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u1"},
            "service_tier": "auto",
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    assert body == {
        "model": "m",
        "max_tokens": 5,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "user": "u1",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    }
