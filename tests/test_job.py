"""The job file: valid jobs load; every mistake is ONE JobFileError line naming the key."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import JobFileError, UsageError
from pipeline.job.load import job_from_dict, load_job, with_options
from pipeline.job.model import ApiSettings, Job, Limits
from pipeline.job.options import RunOptions
from pipeline.providers.registry import PROVIDERS

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "jobs" / "label_reviews.toml"
DELETE = object()  # in a patch: remove this key

MINIMAL: dict[str, Any] = {
    "job": {"input": "in.csv"},
    "request": {"model": "claude-haiku-4-5", "max_tokens": 16, "prompt": "Label: {text}"},
}


def patched(patch: dict[str, Any]) -> dict[str, Any]:
    """MINIMAL with `patch` merged in, table by table (DELETE removes a key)."""
    raw = copy.deepcopy(MINIMAL)
    for section, values in patch.items():
        if values is DELETE:
            raw.pop(section, None)
        elif isinstance(values, dict) and isinstance(raw.get(section), dict):
            for key, value in values.items():
                if value is DELETE:
                    raw[section].pop(key, None)
                else:
                    raw[section][key] = value
        else:
            raw[section] = values
    return raw


# --- valid jobs ----------------------------------------------------------------------


def test_minimal_job_gets_the_defaults() -> None:
    job = job_from_dict(copy.deepcopy(MINIMAL), source="mini.toml", default_name="mini")
    assert isinstance(job, Job)
    assert job.name == "mini"
    assert job.input == Path("in.csv")
    assert job.output == Path("out/mini")
    assert job.model == "claude-haiku-4-5"
    assert job.max_tokens == 16
    assert job.prompt.columns == ("text",)
    assert "prompt" not in job.request  # the template is not an API field
    assert job.system is None
    assert job.id_column is None
    assert job.keep_columns == ()
    assert job.api == ApiSettings()
    assert job.api.base_url == "https://api.aisa.one"
    assert job.api.api_key_env == "AISA_API_KEY"
    assert job.limits == Limits()
    assert job.extract.kind == "text"
    assert job.pricing == {}
    assert job.template_columns() == {"text"}


def test_sample_job_loads() -> None:
    job = load_job(SAMPLE)
    assert job.name == "label_reviews"
    assert job.source_file == SAMPLE
    assert job.input == Path("sample_data/reviews.csv")
    assert job.output == Path("out/label_reviews")
    assert job.id_column == "review_id"
    assert job.keep_columns == ("product", "text", "gold_label")
    assert job.gold_column == "gold_label"
    assert job.api.format == "anthropic"
    assert job.model == "claude-haiku-4-5-20251001"
    assert job.max_tokens == 16
    assert job.request["temperature"] == 0
    assert isinstance(job.system, str)
    assert job.template_columns() == {"product", "text"}
    assert job.limits.concurrency == 16
    assert job.limits.requests_per_minute == 1200
    assert job.limits.max_retries == 8
    assert job.limits.max_cost_usd == 5.0
    assert job.extract.kind == "choice"
    assert job.extract.column == "label"
    assert job.extract.choices == ("positive", "negative", "neutral")


def test_job_name_defaults_to_the_file_stem(tmp_path) -> None:
    path = tmp_path / "my_labels.toml"
    path.write_text(
        '[job]\ninput = "x.csv"\n[request]\nmodel = "m"\nmax_tokens = 5\nprompt = "{a}"\n',
        encoding="utf-8",
    )
    job = load_job(path)
    assert job.name == "my_labels"
    assert job.output == Path("out/my_labels")


def test_full_job_keeps_every_setting() -> None:
    raw = patched(
        {
            "api": {"format": "anthropic", "auth": "x-api-key", "api_key_env": "K"},
            "request": {
                "max_tokens": 4096,
                "system": [{"type": "text", "text": "Sys {lang}", "cache_control": {}}],
                "top_k": 5,
                "stop_sequences": ["END"],
                "tools": [{"name": "t", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "tool", "name": "t"},
                "thinking": {"type": "disabled"},  # enabled refuses top_k and a forced tool
                "metadata": {"user_id": "u"},
                "service_tier": "standard_only",
                "stream": False,
                "extra": {"brand_new_field": [1, 2]},
            },
            "limits": {
                "concurrency": 4,
                "requests_per_minute": 50,
                "input_tokens_per_minute": 30000,
                "output_tokens_per_minute": 8000.5,
                "max_retries": 0,
                "timeout_s": 30,
                "connect_timeout_s": 2.5,
                "max_cost_usd": 0.01,
            },
            "extract": {"kind": "choice", "column": "c", "choices": ["a", "b"]},
            "overrides": {"model": "model_col", "max_tokens": "mt"},
            "pricing": {"gw-model": {"input": 1, "output": 2.5, "cache_read": 0}},
        }
    )
    job = job_from_dict(raw)
    assert job.api.format == "anthropic" and job.api.auth == "x-api-key"
    assert job.request["brand_new_field"] == [1, 2]  # [request.extra] merged
    assert "extra" not in job.request
    assert job.request["thinking"] == {"type": "disabled"}
    assert job.template_columns() == {"text", "lang"}
    assert job.limits.concurrency == 4
    assert job.limits.output_tokens_per_minute == 8000.5
    assert job.limits.max_retries == 0
    assert job.overrides == {"model": "model_col", "max_tokens": "mt"}
    assert job.pricing == {"gw-model": {"input": 1.0, "output": 2.5, "cache_read": 0.0}}


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("request", "temperature", 0),
        ("request", "temperature", 1),
        ("request", "temperature", 0.5),
        ("request", "top_p", 0),
        ("request", "top_p", 1.0),
        ("request", "top_k", 0),
        ("request", "max_tokens", 1),
        ("limits", "concurrency", 1),
        ("limits", "max_retries", 0),
        ("request", "thinking", {"type": "disabled"}),
        ("request", "thinking", {"type": "adaptive"}),
        ("request", "tool_choice", {"type": "none"}),
        ("extract", "kind", "text"),
    ],
)
def test_boundary_values_are_accepted(section: str, key: str, value: Any) -> None:
    job = job_from_dict(patched({section: {key: value}}))
    assert job is not None


# --- bad jobs ------------------------------------------------------------------------

BAD_JOBS = [
    # (id, patch, parts the one-line message must contain)
    ("unknown table", {"jobb": {"x": 1}}, ["[jobb]", "unknown table", "[job]"]),
    ("table not a table", {"limits": 5}, ["limits", "table"]),
    (
        "unknown request key",
        {"request": {"temprature": 0.5}},
        ["[request] temprature", "unknown key", "[request.extra]"],
    ),
    ("unknown limits key", {"limits": {"rpm": 60}}, ["[limits] rpm", "unknown key"]),
    ("unknown job key", {"job": {"inptu": "x"}}, ["[job] inptu", "unknown key"]),
    ("max_tokens string", {"request": {"max_tokens": "16"}}, ["[request] max_tokens", "integer"]),
    ("max_tokens float", {"request": {"max_tokens": 16.0}}, ["[request] max_tokens", "integer"]),
    ("max_tokens zero", {"request": {"max_tokens": 0}}, ["[request] max_tokens", ">= 1"]),
    ("max_tokens bool", {"request": {"max_tokens": True}}, ["[request] max_tokens", "integer"]),
    ("concurrency float", {"limits": {"concurrency": 1.5}}, ["[limits] concurrency", "integer"]),
    ("concurrency zero", {"limits": {"concurrency": 0}}, ["[limits] concurrency", ">= 1"]),
    ("concurrency neg", {"limits": {"concurrency": -4}}, ["[limits] concurrency"]),
    ("rpm zero", {"limits": {"requests_per_minute": 0}}, ["[limits] requests_per_minute"]),
    ("timeout zero", {"limits": {"timeout_s": 0}}, ["[limits] timeout_s"]),
    ("max_cost zero", {"limits": {"max_cost_usd": 0}}, ["[limits] max_cost_usd"]),
    ("max_retries neg", {"limits": {"max_retries": -1}}, ["[limits] max_retries"]),
    ("temperature 1.5", {"request": {"temperature": 1.5}}, ["[request] temperature", "<= 1"]),
    ("temperature -0.1", {"request": {"temperature": -0.1}}, ["[request] temperature", ">= 0"]),
    ("temperature str", {"request": {"temperature": "0"}}, ["[request] temperature", "number"]),
    ("top_p 2", {"request": {"top_p": 2}}, ["[request] top_p", "<= 1"]),
    ("top_k neg", {"request": {"top_k": -1}}, ["[request] top_k"]),
    (
        "budget == max_tokens",
        {"request": {"max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 2048}}},
        ["thinking.budget_tokens", "max_tokens", "2048"],
    ),
    (
        "budget > max_tokens",
        {"request": {"max_tokens": 16, "thinking": {"type": "enabled", "budget_tokens": 1024}}},
        ["thinking.budget_tokens", "max_tokens"],
    ),
    (
        "budget < 1024",
        {"request": {"max_tokens": 4096, "thinking": {"type": "enabled", "budget_tokens": 1000}}},
        ["[request] thinking", "budget_tokens", "1024"],
    ),
    (
        "budget missing",
        {"request": {"max_tokens": 4096, "thinking": {"type": "enabled"}}},
        ["[request] thinking", "budget_tokens"],
    ),
    (
        "thinking type",
        {"request": {"thinking": {"type": "on"}}},
        ["[request] thinking", "'on'"],
    ),
    ("stream true", {"request": {"stream": True}}, ["[request] stream", "false"]),
    ("missing model", {"request": {"model": DELETE}}, ["[request] model", "required"]),
    (
        "missing max_tokens",
        {"request": {"max_tokens": DELETE}},
        ["[request] max_tokens", "required"],
    ),
    ("missing prompt", {"request": {"prompt": DELETE}}, ["[request] prompt", "required"]),
    ("missing request", {"request": DELETE}, ["[request] model", "required"]),
    ("missing input", {"job": {"input": DELETE}}, ["[job] input", "required"]),
    (
        "choice without choices",
        {"extract": {"kind": "choice"}},
        ["[extract] choices", "choice"],
    ),
    (
        "choice with empty choices",
        {"extract": {"kind": "choice", "choices": []}},
        ["[extract] choices"],
    ),
    ("choices not strings", {"extract": {"choices": [1, 2]}}, ["[extract] choices", "strings"]),
    ("extract kind", {"extract": {"kind": "regex"}}, ["[extract] kind", "'regex'"]),
    ("tool_choice string", {"request": {"tool_choice": "auto"}}, ["[request] tool_choice"]),
    (
        "tool_choice bad type",
        {"request": {"tool_choice": {"type": "required"}}},
        ["[request] tool_choice", "'required'"],
    ),
    (
        "tool_choice tool without name",
        {"request": {"tool_choice": {"type": "tool"}}},
        ["[request] tool_choice", "name"],
    ),
    ("tools not tables", {"request": {"tools": ["t"]}}, ["[request] tools"]),
    ("system block no text", {"request": {"system": [{"type": "text"}]}}, ["[request] system"]),
    ("system number", {"request": {"system": 5}}, ["[request] system"]),
    ("service_tier", {"request": {"service_tier": "priority"}}, ["[request] service_tier"]),
    ("api format", {"api": {"format": "grpc"}}, ["[api] format", "'grpc'"]),
    ("api auth", {"api": {"auth": "basic"}}, ["[api] auth"]),
    ("prompt empty braces", {"request": {"prompt": "a {} b"}}, ["[request] prompt", "empty"]),
    ("prompt unclosed", {"request": {"prompt": "a {b"}}, ["[request] prompt", "unclosed"]),
    ("system bad template", {"request": {"system": "x }"}}, ["[request]", "system", "single"]),
    ("keep_columns string", {"job": {"keep_columns": "text"}}, ["[job] keep_columns"]),
    (
        "override unknown field",
        {"overrides": {"stop_sequences": "col"}},
        ["[overrides] stop_sequences"],
    ),
    ("override not a column name", {"overrides": {"model": 5}}, ["[overrides] model", "string"]),
    ("pricing not a table", {"pricing": {"m": 5}}, ["[pricing] m", "table"]),
    ("pricing output missing", {"pricing": {"m": {"input": 1}}}, ["[pricing] m.output"]),
    ("pricing input missing", {"pricing": {"m": {"output": 1}}}, ["[pricing] m.input"]),
    ("pricing negative", {"pricing": {"m": {"input": -1, "output": 1}}}, ["[pricing] m.input"]),
    ("pricing string", {"pricing": {"m": {"input": "1", "output": 1}}}, ["[pricing] m.input"]),
    (
        "pricing unknown key",
        {"pricing": {"m": {"input": 1, "output": 1, "cache_write": 2}}},
        ["[pricing] m.cache_write", "unknown key"],
    ),
    # TOML has `nan` and `inf`: a NaN compares false with every bound, so it must be
    # rejected explicitly or it slips through every range check.
    ("temperature nan", {"request": {"temperature": math.nan}}, ["[request] temperature"]),
    ("top_p nan", {"request": {"top_p": math.nan}}, ["[request] top_p"]),
    ("temperature inf", {"request": {"temperature": math.inf}}, ["[request] temperature"]),
    ("rpm nan", {"limits": {"requests_per_minute": math.nan}}, ["[limits] requests_per_minute"]),
    ("timeout nan", {"limits": {"timeout_s": math.nan}}, ["[limits] timeout_s"]),
    ("max_cost nan", {"limits": {"max_cost_usd": math.nan}}, ["[limits] max_cost_usd"]),
    (
        "pricing nan",
        {"pricing": {"m": {"input": math.nan, "output": 1}}},
        ["[pricing] m.input"],
    ),
    (
        "pricing inf",
        {"pricing": {"m": {"input": 1, "output": math.inf}}},
        ["[pricing] m.output"],
    ),
]


@pytest.mark.parametrize(
    ("patch", "parts"), [c[1:] for c in BAD_JOBS], ids=[c[0] for c in BAD_JOBS]
)
def test_bad_job_is_one_line_naming_the_key(patch: dict[str, Any], parts: list[str]) -> None:
    with pytest.raises(JobFileError) as info:
        job_from_dict(patched(patch), source="jobs/x.toml")
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith("jobs/x.toml: "), message
    for part in parts:
        assert part in message, message
    assert isinstance(info.value, UsageError)
    assert info.value.exit_code == 2


# --- job files on disk ---------------------------------------------------------------

GOOD_TOML = '[job]\ninput = "x.csv"\n[request]\nmodel = "m"\nmax_tokens = 5\nprompt = "{a}"\n'


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("[job\ninput = 'x'\n", ["invalid TOML", "line 1"]),
        ('[job]\ninput = "x.csv\n', ["invalid TOML"]),
        ("[job]\ninput = x.csv\n", ["invalid TOML"]),
        ('[job]\ninput = "a"\ninput = "b"\n', ["invalid TOML"]),  # duplicate key
        (GOOD_TOML + "[limits]\nconcurrency = 1.5\n", ["[limits] concurrency", "integer"]),
        (GOOD_TOML + "[request.extra]\nfoo = 1\n[reqest]\n", ["[reqest]", "unknown table"]),
        (GOOD_TOML + "[limits]\nrequests_per_minute = nan\n", ["requests_per_minute"]),
    ],
)
def test_bad_job_file_names_the_file(tmp_path, text: str, parts: list[str]) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(JobFileError) as info:
        load_job(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message
    for part in parts:
        assert part in message, message


def test_missing_job_file(tmp_path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(JobFileError) as info:
        load_job(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "not found" in message


def test_job_file_not_utf8(tmp_path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(GOOD_TOML.replace("{a}", "caf\xe9 {a}").encode("latin-1"))
    with pytest.raises(JobFileError) as info:
        load_job(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_job_file_is_a_directory(tmp_path) -> None:
    with pytest.raises(JobFileError) as info:
        load_job(tmp_path)
    assert "\n" not in str(info.value)
    assert str(tmp_path) in str(info.value)


# --- absurd limits are refused at load (and through the flags) -------------------------

# (key, the lowest accepted, the highest accepted or None, a refused value below, above)
LIMIT_BOUNDS = [
    ("concurrency", 1, 10_000, 0, 100_000_000),
    ("requests_per_minute", 0.01, 1_000_000, 1e-300, 1e7),
    ("input_tokens_per_minute", 1, 10_000_000_000, 0.5, 1e11),
    ("output_tokens_per_minute", 1, 10_000_000_000, 1e-9, 1e300),
    ("tokens_per_minute", 1, 10_000_000_000, 0, 1e12),
    ("max_retries", 0, 1000, -1, 10**9),
    ("timeout_s", 0.1, 86_400, 1e-300, 86_401),
    ("connect_timeout_s", 0.1, 86_400, 0.0, 1e9),
    ("max_cost_usd", 1e-6, None, 0, None),
]


@pytest.mark.parametrize(
    ("key", "low", "high"), [c[:3] for c in LIMIT_BOUNDS], ids=[c[0] for c in LIMIT_BOUNDS]
)
def test_limits_at_their_bounds_are_accepted(key: str, low: float, high: float | None) -> None:
    for value in (low, high) if high is not None else (low, 1e12):
        job = job_from_dict(patched({"limits": {key: value}}))
        assert getattr(job.limits, key) == value


REFUSED_LIMITS = [
    (key, value)
    for key, _, _, below, above in LIMIT_BOUNDS
    for value in (below, above, math.nan, math.inf, -math.inf)
    if value is not None
]


@pytest.mark.parametrize(
    ("key", "value"), REFUSED_LIMITS, ids=[f"{k}={v}" for k, v in REFUSED_LIMITS]
)
def test_absurd_limits_are_one_line_naming_the_key_and_the_range(key: str, value: Any) -> None:
    with pytest.raises(JobFileError) as info:
        job_from_dict(patched({"limits": {key: value}}), source="jobs/x.toml")
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    assert message.startswith(f"jobs/x.toml: [limits] {key}: must be"), message
    bounds = next(c for c in LIMIT_BOUNDS if c[0] == key)
    if bounds[2] is not None:  # two ends: the message gives the whole accepted range
        assert "accepted:" in message, message


@pytest.mark.parametrize(
    ("flag", "value", "parts"),
    [
        ("concurrency", 100_000_000, ["--concurrency", "<= 10000", "accepted: 1 to 10000"]),
        ("concurrency", 0, ["--concurrency", ">= 1"]),
        ("rpm", 1e-300, ["--rpm", ">= 0.01", "1e-300"]),
        ("rpm", math.nan, ["--rpm", "finite"]),
        ("max_cost", math.inf, ["--max-cost", "finite"]),
        ("max_cost", -1.0, ["--max-cost", "> 0"]),
        ("output", "", ["--output", "empty"]),
        ("input", "a\0b", ["--input", "NUL"]),
        ("base_url", "ftp://x", ["--base-url", "http://"]),
    ],
)
def test_flags_get_the_checks_of_the_keys_they_replace(
    flag: str, value: Any, parts: list[str]
) -> None:
    job = job_from_dict(copy.deepcopy(MINIMAL))
    with pytest.raises(UsageError) as info:
        with_options(job, RunOptions(**{flag: value}))
    assert "\n" not in str(info.value) and info.value.exit_code == 2
    for part in parts:
        assert part in str(info.value), str(info.value)


def test_flags_within_bounds_replace_the_limits() -> None:
    job = with_options(
        job_from_dict(copy.deepcopy(MINIMAL)), RunOptions(concurrency=10_000, rpm=0.01)
    )
    assert (job.limits.concurrency, job.limits.requests_per_minute) == (10_000, 0.01)
    assert with_options(job, RunOptions(max_cost=2.5)).limits.max_cost_usd == 2.5


# --- [request.extra]: known fields get the same checks as in [request] -----------------

BAD_EXTRA = [
    ("temperature 5", {"temperature": 5}, "[request.extra] temperature: must be <= 1"),
    ("max_tokens 0", {"max_tokens": 0}, "[request.extra] max_tokens: must be >= 1"),
    ("max_tokens abc", {"max_tokens": "abc"}, "[request.extra] max_tokens: must be an integer"),
    ("model 5", {"model": 5}, "[request.extra] model: must be a string"),
    ("model empty", {"model": " "}, "[request.extra] model: must name a model"),
    ("top_p nan", {"top_p": math.nan}, "[request.extra] top_p: must be a finite number"),
    ("top_k float", {"top_k": 2.5}, "[request.extra] top_k: must be an integer"),
    ("stream true", {"stream": True}, "[request.extra] stream: must be false"),
    ("tools not tables", {"tools": "x"}, "[request.extra] tools: must be an array of tables"),
    (
        "thinking budget",
        {"thinking": {"type": "enabled", "budget_tokens": 10}},
        "[request.extra] thinking.budget_tokens: must be >= 1024",
    ),
    ("tool_choice", {"tool_choice": {"type": "all"}}, "[request.extra] tool_choice: must be"),
    ("service_tier", {"service_tier": "fast"}, "[request.extra] service_tier: must be one of"),
    ("metadata user", {"metadata": {"user_id": 7}}, "[request.extra] metadata.user_id"),
    ("prompt", {"prompt": "x {text}"}, "[request.extra] prompt: is the prompt template"),
    ("system", {"system": "You {x}"}, "[request.extra] system: is a {column} template"),
    ("messages", {"messages": []}, "[request.extra] messages: is built from [request] prompt"),
    ("nested extra", {"extra": {}}, "[request.extra] extra:"),
]


@pytest.mark.parametrize(
    ("extra", "expected"), [c[1:] for c in BAD_EXTRA], ids=[c[0] for c in BAD_EXTRA]
)
def test_known_fields_in_extra_are_checked_like_in_request(
    extra: dict[str, Any], expected: str
) -> None:
    raw = patched({"request": {key: DELETE for key in extra}})  # set in extra only
    raw["request"]["extra"] = extra
    with pytest.raises(JobFileError) as info:
        job_from_dict(raw, source="jobs/x.toml")
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    assert message.startswith(f"jobs/x.toml: {expected}"), message


def test_a_field_in_both_request_and_extra_is_refused() -> None:
    with pytest.raises(JobFileError) as info:
        job_from_dict(patched({"request": {"extra": {"max_tokens": 16}}}), source="j.toml")
    assert (
        str(info.value) == "j.toml: [request.extra] max_tokens: is set in [request] too: keep one"
    )


def test_rules_across_keys_apply_after_extra_is_merged() -> None:
    thinking = {"type": "enabled", "budget_tokens": 2048}
    with pytest.raises(JobFileError, match=r"thinking.budget_tokens: must be < max_tokens"):
        job_from_dict(patched({"request": {"max_tokens": 1024, "extra": {"thinking": thinking}}}))
    raw = patched({"request": {"max_tokens": DELETE, "thinking": thinking}})
    raw["request"]["extra"] = {"max_tokens": 2048}
    with pytest.raises(JobFileError, match=r"must be < max_tokens \(2048 >= 2048\)"):
        job_from_dict(raw)
    raw["request"]["extra"] = {"max_tokens": 4096}
    job = job_from_dict(raw)
    assert job.max_tokens == 4096 and job.request["thinking"] == thinking


def test_valid_known_and_unknown_fields_in_extra_are_sent() -> None:
    raw = patched({"request": {"max_tokens": DELETE}})
    raw["request"]["extra"] = {"max_tokens": 32, "temperature": 1, "brand_new": {"a": [1]}}
    job = job_from_dict(raw)
    assert job.request == {
        "model": "claude-haiku-4-5", "max_tokens": 32, "temperature": 1, "brand_new": {"a": [1]},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("patch", "parts"),
    [
        ({"request": {"prompt": ""}}, ["[request] prompt", "empty"]),
        ({"request": {"prompt": " \n\t "}}, ["[request] prompt", "empty"]),
        ({"request": {"model": ""}}, ["[request] model", "must name a model"]),
        (
            {"request": {"system": [{"type": "text", "text": "a"}, {"type": "text", "text": " "}]}},
            ["[request] system", "block 2 has an empty `text`"],
        ),
        ({"request": {"max_tokens": 1_000_001}}, ["[request] max_tokens", "<= 1000000"]),
        ({"request": {"top_k": 10**7}}, ["[request] top_k", "<= 1000000"]),
        ({"job": {"output": ""}}, ["[job] output", "empty"]),
        ({"job": {"input": "in\0.csv"}}, ["[job] input", "NUL"]),
        ({"job": {"output": 5}}, ["[job] output", "string"]),
    ],
)
def test_values_that_cannot_work_are_refused_at_load(
    patch: dict[str, Any], parts: list[str]
) -> None:
    with pytest.raises(JobFileError) as info:
        job_from_dict(patched(patch), source="jobs/x.toml")
    assert "\n" not in str(info.value)
    for part in parts:
        assert part in str(info.value), str(info.value)


def test_a_prompt_of_literal_text_only_still_loads() -> None:
    assert job_from_dict(patched({"request": {"prompt": "Say hi"}})).prompt.text == "Say hi"


def test_a_job_built_in_code_gets_the_limits_checks_when_run() -> None:
    job = job_from_dict(copy.deepcopy(MINIMAL))
    built = replace(job, limits=replace(job.limits, requests_per_minute=1e-300))
    with pytest.raises(UsageError, match=r"^\[limits\] requests_per_minute: must be >= 0.01"):
        with_options(built, RunOptions())
    assert (
        with_options(built, RunOptions(rpm=60)).limits.requests_per_minute == 60
    )  # the flag replaces it


# --- formats: the providers' registry, not a list -------------------------------------


def test_a_format_not_in_the_registry_is_refused_naming_the_accepted_ones() -> None:
    with pytest.raises(JobFileError) as info:
        job_from_dict(patched({"api": {"format": "grpc"}}), source="jobs/x.toml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("jobs/x.toml: [api] format: ")
    for name in PROVIDERS:
        assert repr(name) in message, message


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_every_registered_format_loads_and_batch_mode_follows_its_capability(name: str) -> None:
    assert job_from_dict(patched({"api": {"format": name}})).api.format == name
    batch = patched({"api": {"format": name, "mode": "batch"}})
    job = job_from_dict(copy.deepcopy(MINIMAL))
    online = replace(job, api=replace(job.api, format=name))
    if PROVIDERS[name].supports_batches:
        assert job_from_dict(batch).api.mode == "batch"
        assert with_options(online, RunOptions(batch=True)).api.mode == "batch"
        return
    with pytest.raises(JobFileError, match=r"\[api\] mode: batch mode needs format = "):
        job_from_dict(batch)
    with pytest.raises(UsageError, match=r"^--batch: batch mode needs \[api\] format = "):
        with_options(online, RunOptions(batch=True))
