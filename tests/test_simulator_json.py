"""The simulator answers a prompt that asks for JSON with an object of the keys it names, of
the types it names, that the pipeline's json extraction takes; a forced tool's call parses
for every JSON-schema type; `[[sim:reply=...]]` scripts any answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

from pipeline.job.load import fields_from_schema
from pipeline.job.model import ExtractSpec
from pipeline.labels.extract import Extractor
from pipeline.simulator.answers import Prompt, ToolSpec, generate, judge_for, parse_directives
from pipeline.simulator.json_reply import json_ask
from pipeline.simulator.sentiment import guess_label
from tests.e2e import label_job
from tests.simulator_helpers import MODEL

REVIEWS = [
    "I love this kettle, it works great and feels sturdy.",
    "Broke after two days. Total waste of money.",
    "It arrived on Tuesday in a box.",
    "Not bad at all, perfect for my small kitchen.",
]
FIELDS = {
    "sentiment": "string",
    "stars": "integer",
    "score": "number",
    "fair": "boolean",
    "tags": "json",
}
ASKS = {
    "example object": 'Reply in JSON: {"sentiment": "positive|negative|neutral", "stars": 1-5, '
    '"score": 0.75, "fair": true, "tags": ["a", "b"]}',
    "placeholders": 'Return JSON like {"sentiment": ..., "stars": <integer>, "score": "0.0-1.0", '
    '"fair": "true or false", "tags": [...]}',
    "key list": "Answer as a JSON object with keys sentiment (one of positive, negative, "
    "neutral), stars (integer 1-5), score (a number between 0 and 1), fair (boolean) and "
    "tags (a list of words).",
    "bullets": "Reply in JSON with these fields:\n- sentiment: positive, negative or neutral\n"
    "- stars: how many stars, 1 to 5\n- score: probability it is genuine\n- fair: true/false\n"
    "- tags: array of strings",
}


def prompt_of(text: str, model: str = MODEL, system: tuple[str, ...] = ()) -> Prompt:
    return Prompt(model, system, (("user", text),), 400, last_user_text=text)


def answer_text(prompt: Prompt, seed: int = 1) -> str:
    block = generate(prompt, seed, parse_directives(prompt.last_user_text)).blocks[0]
    assert block["type"] == "text"
    return str(block["text"])


def extracted(text: str, fields: dict[str, str] = FIELDS) -> dict[str, Any]:
    return Extractor(ExtractSpec(kind="json", fields=fields)).record(text, [])


@pytest.mark.parametrize("ask", ASKS.values(), ids=ASKS.keys())
@pytest.mark.parametrize("review", REVIEWS)
@pytest.mark.parametrize("model", [MODEL, "claude-3-haiku-20240307", "claude-opus-4-6"])
def test_every_field_type_parses(ask: str, review: str, model: str) -> None:
    for text in (f"Review: {review}\n{ask}", f"{ask}\n\nReview: {review}"):
        row = extracted(answer_text(prompt_of(text, model)))
        assert (row["label_status"], row["label_error"]) == ("ok", None), text
        assert row["sentiment"] in ("positive", "negative", "neutral")
        assert 1 <= row["stars"] <= 5 and 0 <= row["score"] <= 1
        assert isinstance(orjson.loads(row["tags"]), list)


def test_optional_types_parse_too() -> None:
    optional = {name: kind + "?" for name, kind in FIELDS.items()}
    text = f"Review: {REVIEWS[0]}\n{ASKS['key list']}"
    assert extracted(answer_text(prompt_of(text)), optional)["label_status"] == "ok"


def test_the_choice_field_is_the_judges_label() -> None:
    review = "Broke after two days. Total waste of money."
    ask = 'Reply in JSON: {"sentiment": "positive|negative|neutral", "stars": 1-5}'
    verdict = guess_label(review, ["positive", "negative", "neutral"], 1)
    assert verdict == "negative"
    for skill in ("1", "0"):  # skill 1: always the verdict; 0: always the distractor
        text = f"[[sim:skill={skill}]]Review: {review}\n{ask}"
        sentiment = orjson.loads(answer_text(prompt_of(text)))["sentiment"]
        assert (sentiment == verdict) == (skill == "1")


def test_the_judge_sees_the_text_without_the_instruction() -> None:
    ask = json_ask('Review: it is awful\nReply in JSON: {"label": "positive|negative"}')
    assert ask is not None and "positive" not in ask.subject and "awful" in ask.subject
    prompt = prompt_of('Review: it is awful\nReply in JSON: {"label": "positive|negative"}')
    judge = judge_for(prompt, 1)
    assert judge.verdict(ask.subject, ["positive", "negative"]) == "negative"


def test_choices_named_elsewhere_go_to_the_key_they_name() -> None:
    text = (
        "Classify the review's tone as happy, angry or calm.\n"
        "Reply in JSON with keys tone and reason.\nReview: [[sim:skill=1]]great, I love it"
    )
    reply = orjson.loads(answer_text(prompt_of(text)))
    assert set(reply) == {"tone", "reason"} and reply["tone"] in ("happy", "angry", "calm")
    assert isinstance(reply["reason"], str) and reply["reason"]


def test_keys_and_types_from_names_alone() -> None:
    text = 'Give JSON with "sentiment", "is_spam", "stars", "confidence". Review: good value'
    reply = orjson.loads(answer_text(prompt_of(text)))
    assert reply["sentiment"] in ("positive", "negative", "neutral")
    assert isinstance(reply["is_spam"], bool) and reply["stars"] in range(1, 6)
    assert isinstance(reply["confidence"], float) and 0 <= reply["confidence"] <= 1


def test_json_asked_in_the_system_prompt() -> None:
    system = ('Answer in JSON: {"sentiment": "positive|negative|neutral", "stars": 1-5}',)
    row = extracted(
        answer_text(prompt_of("great kettle", system=system)),
        {"sentiment": "string", "stars": "integer"},
    )
    assert row["label_status"] == "ok"


def test_json_asked_without_keys_is_an_object_still() -> None:
    assert orjson.loads(answer_text(prompt_of("Reply in JSON. Review: nice"))).keys() == {"answer"}


@pytest.mark.parametrize(
    "text",
    [
        "Review: The JSON export is broken\nAnswer with one word: positive, negative or neutral.",
        "Tell me about token buckets.",
    ],
)
def test_a_prompt_that_does_not_ask_for_json_is_answered_as_before(text: str) -> None:
    reply = answer_text(prompt_of(text))
    assert not reply.startswith("{")


def test_a_scripted_reply_is_the_answer_exactly() -> None:
    scripted = '{"sentiment": "odd", "stars": "many"}'
    ask = 'Reply in JSON: {"sentiment": "positive|negative", "stars": 1-5}'
    text = f"{ask} [[sim:reply={scripted}]]"
    assert answer_text(prompt_of(text)) == scripted


TOOL_SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "half": {"type": "integer", "minimum": 0.5, "maximum": 2.5},
        "big": {"type": "integer", "minimum": 0, "maximum": 1e30},
        "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "verified": {"type": "boolean"},
        "level": {"enum": [1, 2, 3]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "meta": {"type": "object", "properties": {"lang": {"type": "string"}}},
        "maybe": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
        "either": {"type": ["null", "string"]},
        "fixed": {"const": "v1"},
    },
    "required": [
        "sentiment",
        "stars",
        "half",
        "big",
        "score",
        "verified",
        "level",
        "tags",
        "meta",
        "fixed",
    ],  # maybe and either are optional: a call may leave them out
}


@pytest.mark.parametrize("review", REVIEWS)
def test_a_forced_tool_call_parses_for_every_schema_type(review: str) -> None:
    tool = ToolSpec("record", "", TOOL_SCHEMA)
    prompt = Prompt(
        MODEL, (), (("user", review),), 400, review, tools=(tool,), forced_tool="record"
    )
    answer = generate(prompt, 1)
    fields = fields_from_schema(TOOL_SCHEMA)
    assert fields["stars"] == "integer" and fields["tags"] == "json" and fields["level"] == "json"
    assert fields["maybe"] == "json?" and fields["either"] == "json?"  # not `required`
    row = Extractor(ExtractSpec(kind="tool", tool="record", fields=fields)).record(
        "", list(answer.blocks)
    )
    assert (row["label_status"], row["label_error"]) == ("ok", None)
    assert row["sentiment"] in ("positive", "negative", "neutral") and 1 <= row["stars"] <= 5
    assert row["half"] in (1, 2) and 0 <= row["big"] <= 2**53 and 0 <= row["score"] <= 1
    assert orjson.loads(row["level"]) in (1, 2, 3) and isinstance(orjson.loads(row["maybe"]), int)
    assert row["fixed"] == '"v1"' and isinstance(orjson.loads(row["meta"]), dict)


def test_json_job_on_the_simulator_is_all_ok(tmp_path: Path, sim: Any, cli: Any) -> None:
    pl.DataFrame({"id": [f"r{i}" for i in range(len(REVIEWS))], "text": REVIEWS}).write_csv(
        tmp_path / "in.csv"
    )
    prompt = (
        "Review: {text}\nReply in JSON: "
        '{{"sentiment": "positive|negative|neutral", "stars": 1-5, "score": 0.5, '
        '"fair": true, "tags": ["word"]}}'
    )
    fields = {**FIELDS, "stars": "integer?"}
    extract = {"kind": "json", "choices": [], "fields": fields}
    request = {"prompt": prompt, "max_tokens": 300}
    job = label_job(tmp_path, tmp_path / "in.csv", extract=extract, request=request)
    sim.reset()
    done = cli("run", str(job), "--base-url", sim.base_url, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert f"{len(REVIEWS)} ok, 0 error" in done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["label_status"].to_list() == ["ok"] * len(REVIEWS)
    assert out.schema["stars"] == pl.Int64 and out.schema["score"] == pl.Float64
    assert set(out["sentiment"]) <= {"positive", "negative", "neutral"}
    assert out["stars"].null_count() == 0
