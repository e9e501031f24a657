"""Typed JSON / tool fields: optional ones ("integer?"), and one bad field that keeps the
others' values (the row's label is invalid, its error names the field)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from pipeline.errors import JobFileError
from pipeline.job.load import job_from_dict
from pipeline.job.model import ExtractSpec
from pipeline.labels.extract import Extractor
from pipeline.labels.structured import column_type, field_type, field_values, typed_values
from tests.e2e import label_job

FIELDS = {"sentiment": "string", "stars": "integer?", "fair": "boolean", "note": "json?"}


def record(answer: str, fields: dict[str, str] = FIELDS) -> dict[str, Any]:
    return Extractor(ExtractSpec(kind="json", fields=fields)).record(answer, [])


def test_a_question_mark_makes_a_field_optional_of_the_same_column_type() -> None:
    assert field_type("integer?") == ("integer", True)
    assert field_type("integer") == ("integer", False)
    for kind in ("string", "integer", "number", "boolean", "json"):
        assert column_type(kind + "?") == column_type(kind)
    columns = Extractor(ExtractSpec(kind="json", fields=FIELDS)).fields()
    assert [(f.name, f.type) for f in columns] == [
        ("sentiment", pa.string()),
        ("stars", pa.int64()),
        ("fair", pa.bool_()),
        ("note", pa.string()),
    ]


@pytest.mark.parametrize(
    "answer",
    [
        '{"sentiment": "positive", "fair": true}',
        '{"sentiment": "positive", "stars": null, "fair": true, "note": null}',
    ],
)
def test_an_optional_field_missing_or_null_is_a_null_cell_and_the_label_ok(answer: str) -> None:
    assert record(answer) == {
        "sentiment": "positive",
        "stars": None,
        "fair": True,
        "note": None,
        "label_status": "ok",
        "label_error": None,
    }


def test_a_present_optional_field_is_typed_like_a_required_one() -> None:
    row = record('{"sentiment": "x", "stars": 4.0, "fair": false, "note": [1, {"a": 2}]}')
    assert (row["stars"], row["note"], row["label_status"]) == (4, '[1,{"a":2}]', "ok")


def test_a_wrong_type_in_an_optional_field_is_invalid_and_keeps_the_others() -> None:
    row = record('{"sentiment": "positive", "stars": "four", "fair": true}')
    assert row["label_status"] == "invalid"
    assert "'stars' should be integer" in row["label_error"]
    assert (row["sentiment"], row["stars"], row["fair"]) == ("positive", None, True)


def test_a_missing_required_field_is_invalid_and_keeps_the_others() -> None:
    row = record('{"stars": 5, "fair": true}')
    assert (row["label_status"], row["label_error"]) == ("invalid", "field 'sentiment' is missing")
    assert (row["sentiment"], row["stars"], row["fair"]) == (None, 5, True)


def test_every_bad_field_is_named() -> None:
    row = record('{"sentiment": 3, "stars": 2}')
    assert (
        row["label_error"] == "field 'sentiment' should be string, got 3; field 'fair' is missing"
    )
    assert row["stars"] == 2 and row["sentiment"] is None


def test_no_object_at_all_leaves_every_field_null() -> None:
    row = record("no json here")
    assert row["label_status"] == "invalid" and "no JSON object" in row["label_error"]
    assert [row[name] for name in FIELDS] == [None] * 4


def test_tool_fields_keep_the_good_values_too() -> None:
    spec = ExtractSpec(
        kind="tool", tool="t", fields={"a": "string", "b": "integer", "c": "number?"}
    )
    content = [{"type": "tool_use", "name": "t", "input": {"a": "yes", "b": 1.5}}]
    row = Extractor(spec).record("", content)
    assert (row["a"], row["b"], row["c"], row["label_status"]) == ("yes", None, None, "invalid")
    assert row["label_error"] == "field 'b' should be integer, got 1.5"


def test_field_values_and_the_strict_typed_values() -> None:
    found = field_values({"a": 1, "b": "x"}, {"a": "integer", "b": "integer?", "c": "string?"})
    assert found.values == {"a": 1, "b": None, "c": None}
    assert found.errors == ("field 'b' should be integer, got \"x\"",)
    with pytest.raises(ValueError, match="'b' should be integer"):
        typed_values({"a": 1, "b": "x"}, {"a": "integer", "b": "integer?"})
    assert typed_values({"a": 1}, {"a": "integer", "b": "integer?"}) == {"a": 1, "b": None}


def json_job(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "job": {"input": "in.csv"},
        "request": {"model": "claude-haiku-4-5", "max_tokens": 16, "prompt": "Label: {text}"},
        "extract": {"kind": "json", "fields": fields},
    }


def test_the_job_file_takes_optional_types_and_names_a_wrong_one() -> None:
    job = job_from_dict(json_job({"stars": "integer?", "sentiment": "string"}))
    assert dict(job.extract.fields) == {"stars": "integer?", "sentiment": "string"}
    for wrong in ("int?", "integer??", "?", 5):
        with pytest.raises(JobFileError, match=r"\[extract\] fields.*stars.*must be one of"):
            job_from_dict(json_job({"stars": wrong}))


def test_reparse_with_an_optional_field_relabels_without_sending(
    tmp_path: Path, sim: Any, cli: Any
) -> None:
    replies = ['{"sentiment": "positive", "stars": 5}', '{"sentiment": "negative"}']
    texts = [f"review {i} [[sim:reply={reply}]]" for i, reply in enumerate(replies)]
    pl.DataFrame({"id": ["a", "b"], "text": texts}).write_csv(tmp_path / "in.csv")

    def job(stars: str) -> Path:
        fields = {"sentiment": "string", "stars": stars}
        extract = {"kind": "json", "choices": [], "fields": fields}
        request = {"prompt": "Label: {text}", "max_tokens": 200}
        return label_job(tmp_path, tmp_path / "in.csv", extract=extract, request=request)

    sim.reset()
    assert cli("run", str(job("integer")), "--base-url", sim.base_url).returncode == 0
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["label_status"].to_list() == ["ok", "invalid"]
    assert out["sentiment"].to_list() == ["positive", "negative"]  # kept beside the bad field
    done = cli("run", str(job("integer?")), "--reparse")
    assert done.returncode == 0, done.stderr
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["label_status"].to_list() == ["ok", "ok"]
    assert out["stars"].to_list() == [5, None] and out.schema["stars"] == pl.Int64
    assert sim.stats()["requests"] == 2  # the first run's; the reparse sent nothing
