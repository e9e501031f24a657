"""Row -> request body: `{column}` templates, every request field, per-row overrides."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from pipeline.input.render import RequestRenderer
from pipeline.job.load import job_from_dict
from pipeline.job.template import (
    EmptyPrompt,
    InvalidValue,
    MissingValue,
    Template,
    TemplateError,
    Unsendable,
)

# --- Template parsing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "columns", "row", "rendered"),
    [
        ("no columns at all", (), {}, "no columns at all"),
        ("", (), {}, ""),
        ("Hello {name}!", ("name",), {"name": "Ada"}, "Hello Ada!"),
        ("{a}{b}", ("a", "b"), {"a": "1", "b": "2"}, "12"),
        ("{a} and {a}", ("a", "a"), {"a": "x"}, "x and x"),
        ("Review: {text}\nLabel:", ("text",), {"text": "ok"}, "Review: ok\nLabel:"),
        # literal braces
        ("{{literal}}", (), {}, "{literal}"),
        ("{{x}} is {x}", ("x",), {"x": "1"}, "{x} is 1"),
        ("{{{x}}}", ("x",), {"x": "v"}, "{v}"),
        ("}}{{", (), {}, "}{"),
        ('JSON: {{"label": "{label}"}}', ("label",), {"label": "pos"}, 'JSON: {"label": "pos"}'),
        # a column name is taken as written: no attribute access, indexing or format spec
        ("{a.b}", ("a.b",), {"a.b": "dotted"}, "dotted"),
        ("{x[0]}", ("x[0]",), {"x[0]": "indexed"}, "indexed"),
        ("{n:>5}", ("n:>5",), {"n:>5": "spec"}, "spec"),
        ("{user name}", ("user name",), {"user name": "spaced"}, "spaced"),
        ("{0}", ("0",), {"0": "zero"}, "zero"),
        ("{__class__}", ("__class__",), {"__class__": "safe"}, "safe"),
    ],
)
def test_template_parses_and_renders(text, columns, row, rendered) -> None:
    template = Template(text)
    assert template.columns == columns
    assert template.render(row) == rendered


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{}", "empty"),
        ("a { } b", "empty"),
        ("unclosed {name", "unclosed"),
        ("{", "unclosed"),
        ("{a{b}", "unclosed"),
        ("single } brace", "single"),
        ("}", "single"),
        ("{a}}", "single"),
        ("{{}", "single"),
    ],
)
def test_malformed_template_raises(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message) as info:
        Template(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("{not a column}", "{not a column}"),  # cell braces stay verbatim
        ("{{doubled}}", "{{doubled}}"),
        ("}", "}"),
        ("", ""),
        ("multi\nline", "multi\nline"),
        (42, "42"),
        (-7, "-7"),
        (0, "0"),
        (3.0, "3"),  # an integral float (e.g. a CSV int column with nulls) has no ".0"
        (-2.0, "-2"),
        (2.5, "2.5"),
        (0.1, "0.1"),
        (1e20, "1e+20"),  # too big to be exact as an int: not a fake long integer
        (True, "True"),
    ],
)
def test_cell_values_are_rendered_sensibly(value: Any, text: str) -> None:
    assert Template("[{v}]").render({"v": value}) == f"[{text}]"


def test_none_cell_raises_missing_value_naming_the_column() -> None:
    with pytest.raises(MissingValue, match="'review text'") as info:
        Template("a {id} b {review text}").render({"id": 1, "review text": None})
    assert info.value.column == "review text"


# --- RequestRenderer -----------------------------------------------------------------

TOOLS = [
    {
        "name": "record_label",
        "description": "Record the label",
        "input_schema": {"type": "object", "properties": {"label": {"type": "string"}}},
    }
]


def wire(body: dict[str, Any]) -> Any:
    """The body as the runner sends it (orjson), so tuples and lists compare equal."""
    return orjson.loads(orjson.dumps(body))


def make_job(request: dict[str, Any], overrides: dict[str, str] | None = None):
    raw: dict[str, Any] = {
        "job": {"input": "in.csv"},
        "request": {"model": "claude-haiku-4-5", "max_tokens": 16, "prompt": "Say {x}"},
    }
    raw["request"].update(request)
    if overrides:
        raw["overrides"] = overrides
    return job_from_dict(copy.deepcopy(raw))


def renderer(request: dict[str, Any], overrides: dict[str, str] | None = None) -> RequestRenderer:
    job = make_job(request, overrides)
    return RequestRenderer(job.request, job.prompt, job.system, job.overrides)


def test_minimal_body() -> None:
    body = renderer({}).render({"x": "hi"})
    assert body == {
        "model": "claude-haiku-4-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Say hi"}],
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0),
        ("temperature", 0.7),
        ("top_p", 0.9),
        ("top_k", 40),
        ("stop_sequences", ["\n", "END"]),
        ("tools", TOOLS),
        ("tool_choice", {"type": "auto", "disable_parallel_tool_use": True}),
        ("tool_choice", {"type": "tool", "name": "record_label"}),
        ("tool_choice", {"type": "none"}),
        ("thinking", {"type": "enabled", "budget_tokens": 1024}),
        ("thinking", {"type": "adaptive"}),
        ("metadata", {"user_id": "batch-7"}),
        ("service_tier", "auto"),
        ("service_tier", "standard_only"),
        ("cache_control", {"type": "ephemeral", "ttl": "1h"}),
    ],
)
def test_every_request_field_passes_through(field: str, value: Any) -> None:
    request = {field: value}
    if field == "thinking":
        request["max_tokens"] = 4096
    body = wire(renderer(request).render({"x": "hi"}))
    assert body[field] == value
    assert body["messages"] == [{"role": "user", "content": "Say hi"}]
    assert set(body) == {"model", "max_tokens", "messages", field}


def test_all_fields_together_and_nothing_else() -> None:
    request = {
        "temperature": 0.2,
        "top_p": 0.95,
        "top_k": 5,
        "stop_sequences": ["###"],
        "tools": TOOLS,
        "tool_choice": {"type": "any"},
        "metadata": {"user_id": "u1"},
        "service_tier": "auto",
        "system": "You label {x}.",
        "stream": False,
    }
    body = wire(renderer(request).render({"x": "reviews"}))
    expected = {k: v for k, v in request.items() if k not in ("system", "stream")}
    assert body == {
        **expected,
        "model": "claude-haiku-4-5",
        "max_tokens": 16,
        "system": "You label reviews.",
        "messages": [{"role": "user", "content": "Say reviews"}],
    }


def test_extra_fields_are_sent_as_they_are() -> None:
    body = renderer({"extra": {"new_api_field": {"a": 1}, "other": "x"}}).render({"x": "1"})
    assert body["new_api_field"] == {"a": 1}
    assert body["other"] == "x"
    assert "extra" not in body and "prompt" not in body


def test_system_string_template() -> None:
    r = renderer({"system": "Label {x} reviews. Braces {{ok}}."})
    assert r.render({"x": "shoe"})["system"] == "Label shoe reviews. Braces {ok}."
    assert r.render({"x": "hat"})["system"] == "Label hat reviews. Braces {ok}."


def test_system_blocks_render_text_and_keep_other_keys() -> None:
    system = [
        {
            "type": "text",
            "text": "You label {x}.",
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        },
        {"type": "text", "text": "Static instructions."},
    ]
    r = renderer({"system": system})
    first = r.render({"x": "shoes"})
    second = r.render({"x": "hats"})
    assert first["system"] == [
        {
            "type": "text",
            "text": "You label shoes.",
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        },
        {"type": "text", "text": "Static instructions."},
    ]
    assert second["system"][0]["text"] == "You label hats."
    # the job's blocks are templates, not overwritten by a render
    assert isinstance(r.system, list)
    assert r.system[0]["text"] == "You label {x}."


def test_system_missing_value_raises() -> None:
    r = renderer({"system": "About {topic}"})
    with pytest.raises(MissingValue, match="topic"):
        r.render({"x": "1", "topic": None})


def test_the_renderer_drops_stream_the_provider_decides_it() -> None:
    # `stream` is the provider's choice (long answers are streamed), never the job's
    job = make_job({"stream": False})
    r = RequestRenderer({**job.request, "stream": True}, job.prompt, None, {})
    assert "stream" not in r.render({"x": "1"})


def test_messages_is_one_user_turn_with_the_rendered_prompt() -> None:
    body = renderer({"prompt": "Review {id}: {x}"}).render({"id": 7, "x": "{great}"})
    assert body["messages"] == [{"role": "user", "content": "Review 7: {great}"}]


@pytest.mark.parametrize(
    ("overrides", "row", "expected"),
    [
        ({"model": "m"}, {"m": "claude-opus-4-7"}, {"model": "claude-opus-4-7"}),
        ({"model": "m"}, {"m": None}, {"model": "claude-haiku-4-5"}),  # null: job's value
        ({"max_tokens": "mt"}, {"mt": 64}, {"max_tokens": 64}),
        ({"max_tokens": "mt"}, {"mt": 64.0}, {"max_tokens": 64}),  # a float column
        ({"max_tokens": "mt"}, {"mt": "128"}, {"max_tokens": 128}),  # a string column
        ({"max_tokens": "mt"}, {"mt": None}, {"max_tokens": 16}),
        ({"temperature": "t"}, {"t": "0.5"}, {"temperature": 0.5}),
        ({"temperature": "t"}, {"t": 1}, {"temperature": 1.0}),
        ({"top_p": "p"}, {"p": 0.25}, {"top_p": 0.25}),
        ({"top_k": "k"}, {"k": "3"}, {"top_k": 3}),
        (
            {"model": "m", "max_tokens": "mt"},
            {"m": "claude-sonnet-4-5", "mt": 5.0},
            {"model": "claude-sonnet-4-5", "max_tokens": 5},
        ),
    ],
)
def test_per_row_overrides(overrides, row, expected) -> None:
    body = renderer({}, overrides).render({"x": "1", **row})
    for field, value in expected.items():
        assert body[field] == value
        assert type(body[field]) is type(value)


def test_override_does_not_leak_into_the_next_row() -> None:
    r = renderer({}, {"max_tokens": "mt"})
    assert r.render({"x": "1", "mt": 99})["max_tokens"] == 99
    assert r.render({"x": "1", "mt": None})["max_tokens"] == 16


# --- empty prompts are error rows, never sent; a non-empty prompt is sent as written -----


@pytest.mark.parametrize(
    ("prompt", "row", "columns"),
    [
        ("{x}", {"x": ""}, "column 'x'"),
        ("{x}", {"x": "   "}, "column 'x'"),
        ("{x}", {"x": "\n\t \r\n"}, "column 'x'"),
        ("{x}", {"x": "\u3000\xa0"}, "column 'x'"),  # Unicode spaces are whitespace too
        ("{a}{b}", {"a": "", "b": " "}, "columns 'a', 'b'"),
        (" {a} \n{b}\t", {"a": "", "b": ""}, "columns 'a', 'b'"),
        ("{a}{a}", {"a": ""}, "column 'a'"),
    ],
)
def test_an_empty_prompt_is_unsendable_naming_its_columns(prompt, row, columns) -> None:
    r = renderer({"prompt": prompt})
    with pytest.raises(EmptyPrompt) as info:
        r.render(row)
    assert info.value.error_type == "empty_prompt"
    assert isinstance(info.value, Unsendable)
    message = str(info.value)
    assert "\n" not in message and "prompt is empty" in message and columns in message


@pytest.mark.parametrize(
    ("prompt", "row"),
    [
        ("{x}", {"x": " x "}),  # surrounding whitespace is the user's: kept
        ("{x}", {"x": "\n\nquestion\n"}),
        ("{x}", {"x": "\u200b"}),  # a zero-width space is not whitespace: sent
        ("{x}", {"x": "0"}),
        ("Label: {x}", {"x": ""}),  # the template's own text is the prompt
        ("{a} {b}", {"a": "", "b": "."}),
    ],
)
def test_a_non_empty_prompt_is_sent_exactly_as_rendered(prompt, row) -> None:
    body = renderer({"prompt": prompt}).render(row)
    assert body["messages"] == [{"role": "user", "content": Template(prompt).render(row)}]


def test_an_empty_system_with_a_prompt_is_still_sent() -> None:
    body = renderer({"system": "{s}"}).render({"x": "hi", "s": ""})
    assert body["system"] == "" and body["messages"][0]["content"] == "Say hi"


# --- override cells get the job file's checks for their field ---------------------------


@pytest.mark.parametrize(
    ("field", "cell", "why"),
    [
        ("max_tokens", "1e30", "<= 1000000"),  # would not fit in 64 bits anywhere
        ("max_tokens", "0", ">= 1"),
        ("max_tokens", "nan", "integer"),
        ("max_tokens", "inf", "integer"),
        ("max_tokens", True, "number"),
        ("top_k", "-1", ">= 0"),
        ("top_k", "1e300", "<= 1000000"),
        ("temperature", "5", "<= 1"),
        ("temperature", "nan", "finite"),
        ("top_p", "x", "number"),
        ("model", "   ", "must name a model"),
    ],
)
def test_an_override_cell_out_of_its_fields_range_is_an_invalid_value(field, cell, why) -> None:
    r = renderer({}, {field: "c"})
    with pytest.raises(InvalidValue) as info:
        r.render({"x": "1", "c": cell})
    message = str(info.value)
    assert info.value.error_type == "invalid_value"
    assert f"column 'c' holds {cell!r}, not a value for {field}" in message and why in message


def test_a_per_row_max_tokens_may_not_undercut_the_thinking_budget() -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    r = renderer({"max_tokens": 4096, "thinking": thinking}, {"max_tokens": "mt"})
    assert r.render({"x": "1", "mt": "2048"})["max_tokens"] == 2048
    with pytest.raises(InvalidValue, match=r"budget_tokens must be < max_tokens \(1024 >= 512\)"):
        r.render({"x": "1", "mt": "512"})


def test_a_system_block_that_renders_empty_is_unsendable_a_string_is_not() -> None:
    blocks = [{"type": "text", "text": "Static."}, {"type": "text", "text": "{s}"}]
    with pytest.raises(EmptyPrompt, match=r"system block 2 is empty in this row \(column 's'"):
        renderer({"system": blocks}).render({"x": "hi", "s": " "})
    assert renderer({"system": blocks}).render({"x": "hi", "s": " s "})["system"][1]["text"] == (
        " s "
    )
