"""Each extraction kind against the simulator: valid, messy and invalid answers. Invalid
labels keep their paid answer and are never sent again."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.labels.structured import object_in_text, typed_values
from tests.e2e import label_job


def run_with_replies(cli, tmp_path, sim, replies: list[str], extract: dict, **sections):
    texts = [f"review {i} [[sim:reply={reply}]]" for i, reply in enumerate(replies)]
    pl.DataFrame({"id": [f"x{i}" for i in range(len(texts))], "text": texts}).write_csv(
        tmp_path / "in.csv"
    )
    job = label_job(
        tmp_path,
        tmp_path / "in.csv",
        extract=extract,
        request={"prompt": "Label: {text}", "max_tokens": 200},
        **sections,
    )
    sim.reset()
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    return pl.read_parquet(tmp_path / "out" / "results.parquet"), job


def test_json_kind_valid_messy_and_invalid(tmp_path, sim, cli):
    replies = [
        '{"sentiment": "positive", "stars": 5, "fair": true}',
        'Sure! Here it is: ```json\n{"sentiment": "negative", "stars": 1.0, "fair": false}\n```',
        'I think {"sentiment": "neutral", "stars": 3, "fair": true} fits.',
        '{"sentiment": "positive", "stars": "five", "fair": true}',
        '{"sentiment": "positive"}',
        "no json at all",
    ]
    out, job = run_with_replies(
        cli,
        tmp_path,
        sim,
        replies,
        {
            "kind": "json",
            "choices": [],
            "fields": {"sentiment": "string", "stars": "integer", "fair": "boolean"},
        },
    )
    assert out.schema["stars"] == pl.Int64 and out.schema["fair"] == pl.Boolean
    # one bad field does not discard the others: row 3's bad stars, row 4's missing ones
    assert out["sentiment"].to_list() == [
        "positive",
        "negative",
        "neutral",
        "positive",
        "positive",
        None,
    ]
    assert out["stars"].to_list() == [5, 1, 3, None, None, None]
    assert out["fair"].to_list() == [True, False, True, True, None, None]
    assert out["label_status"].to_list() == ["ok"] * 3 + ["invalid"] * 3
    errors = out["label_error"].to_list()
    assert "'stars' should be integer" in errors[3]
    assert "'stars' is missing" in errors[4]
    assert "no JSON object" in errors[5]
    assert out["status"].unique().to_list() == ["ok"]  # paid answers, kept
    assert out["cost_usd"].min() > 0
    sim.reset()
    again = cli("run", str(job), "--base-url", sim.base_url)
    assert again.returncode == 0 and sim.stats()["requests"] == 0  # invalid is not re-sent


TOOL = {
    "name": "record_label",
    "description": "Record the review's label",
    "input_schema": {
        "type": "object",
        "required": ["sentiment", "confidence"],
        "properties": {
            "sentiment": {"type": "string", "enum": ["positive", "negative"]},
            "confidence": {"type": "number"},
        },
    },
}


def test_tool_kind_takes_typed_columns_from_the_forced_call(tmp_path, sim, cli):
    # Skill 1: the enum is the simulator's verdict whatever the model (this tests extraction).
    texts = ["[[sim:skill=1]] love it, works great", "[[sim:skill=1]] broke after a day, awful"]
    pl.DataFrame({"id": ["a", "b"], "text": texts}).write_csv(tmp_path / "in.csv")
    job = label_job(
        tmp_path,
        tmp_path / "in.csv",
        extract={"kind": "tool", "choices": []},
        request={"tools": [TOOL], "max_tokens": 200},
    )
    sim.reset()
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["label_status"].to_list() == ["ok", "ok"]
    assert out["sentiment"].to_list() == ["positive", "negative"]
    assert out.schema["confidence"] == pl.Float64 and out["confidence"].null_count() == 0
    assert out["stop_reason"].to_list() == ["tool_use", "tool_use"]


def test_tool_kind_with_a_field_the_call_lacks_is_invalid(tmp_path, sim, cli):
    pl.DataFrame({"id": ["a"], "text": ["fine"]}).write_csv(tmp_path / "in.csv")
    job = label_job(
        tmp_path,
        tmp_path / "in.csv",
        extract={
            "kind": "tool",
            "choices": [],
            "fields": {"sentiment": "string", "aspect": "string"},
        },
        request={"tools": [TOOL], "max_tokens": 200},
    )
    assert cli("run", str(job), "--base-url", sim.base_url).returncode == 0
    row = pl.read_parquet(tmp_path / "out" / "results.parquet").row(0, named=True)
    assert row["label_status"] == "invalid" and "'aspect' is missing" in row["label_error"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('```\n{"a": 1}\n```', {"a": 1}),
        ('Answer: {"a": {"b": 2}} done', {"a": {"b": 2}}),
    ],
)
def test_object_in_text(text, expected):
    assert object_in_text(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("nothing", "no JSON object"),
        ("{broken", "does not parse"),
        ('{"a": }', "does not parse"),
        ("[1, 2]", "no JSON object"),
    ],
)
def test_object_in_text_errors(text, error):
    with pytest.raises(ValueError, match=error):
        object_in_text(text)


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (3, "integer", 3),
        (3.0, "integer", 3),
        (3, "number", 3.0),
        ("x", "string", "x"),
        (True, "boolean", True),
        ([1, 2], "json", "[1,2]"),
        ({"k": "v"}, "json", '{"k":"v"}'),
    ],
)
def test_typed_values(value, kind, expected):
    assert typed_values({"f": value}, {"f": kind}) == {"f": expected}


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (3.5, "integer"),
        (True, "integer"),
        ("3", "number"),
        (1, "boolean"),
        (5, "string"),
    ],
)
def test_typed_values_refuses_the_wrong_type(value, kind):
    with pytest.raises(ValueError, match="should be"):
        typed_values({"f": value}, {"f": kind})


def test_reparse_relabels_stored_answers_without_one_request(tmp_path, sim, cli):
    replies = ["Positive!", "negative", '{"sentiment": "neutral", "stars": 3}', "unsure"]
    out, _ = run_with_replies(cli, tmp_path, sim, replies, {"kind": "text", "choices": []})
    assert out["label"].to_list() == [
        "Positive!",
        "negative",
        '{"sentiment": "neutral", "stars": 3}',
        "unsure",
    ]
    choice = label_job(
        tmp_path,
        tmp_path / "in.csv",
        request={"prompt": "Label: {text}", "max_tokens": 200},
        extract={"kind": "choice"},
    )  # positive / negative / neutral
    sim.reset()
    refused = cli("run", str(choice), "--base-url", sim.base_url)
    assert refused.returncode == 2 and "--reparse" in refused.stderr
    done = cli("run", str(choice), "--reparse")
    assert done.returncode == 0, done.stderr
    assert "relabelled 4 stored answers (3 ok, 1 invalid), nothing sent" in done.stderr
    relabelled = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert relabelled["label"].to_list() == ["positive", "negative", "neutral", None]
    assert relabelled["cost_usd"].to_list() == out["cost_usd"].to_list()  # the paid answers
    as_json = label_job(
        tmp_path,
        tmp_path / "in.csv",
        request={"prompt": "Label: {text}", "max_tokens": 200},
        extract={
            "kind": "json",
            "choices": [],
            "fields": {"sentiment": "string", "stars": "integer"},
        },
    )
    assert cli("run", str(as_json), "--reparse").returncode == 0
    typed = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert "label" not in typed.columns and typed["stars"].to_list() == [None, None, 3, None]
    assert sim.stats()["requests"] == 0  # the simulator saw nothing of the reparses
    resumed = cli("run", str(as_json), "--base-url", sim.base_url)
    assert resumed.returncode == 0 and sim.stats()["requests"] == 0


def test_choice_and_text_kinds_valid_messy_and_invalid(tmp_path, sim, cli):
    replies = ["positive", "**Negative.**", "I'd say neutral overall", "maybe", "pos"]
    out, _ = run_with_replies(cli, tmp_path, sim, replies, {"kind": "choice"})
    assert out["label"].to_list() == ["positive", "negative", "neutral", None, "positive"]
    assert out["label_status"].to_list() == ["ok", "ok", "ok", "invalid", "ok"]
    assert "none of the choices" in out["label_error"][3]


def test_text_kind_strips_and_marks_an_empty_answer_invalid(tmp_path, sim, cli):
    out, _ = run_with_replies(
        cli, tmp_path, sim, ["  an answer  ", ""], {"kind": "text", "choices": []}
    )
    assert out["label"].to_list() == ["an answer", None]
    assert out["label_status"].to_list() == ["ok", "invalid"]
    assert out["label_error"][1] == "empty answer"
