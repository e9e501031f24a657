"""[cascade] in the job file: what loads, and every mistake as one JobFileError line naming
the table and key (no sockets: the job is validated before anything is sent)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from pipeline.errors import JobFileError
from pipeline.job.load import job_from_dict, load_job
from pipeline.job.model import CascadeSettings
from tests.e2e import REPO, write_job

HAIKU, OPUS = "claude-3-haiku-20240307", "claude-opus-4-6"
DELETE = object()  # in a patch: remove this key

CASCADE: dict[str, Any] = {
    "job": {"input": "in.csv"},
    "request": {"max_tokens": 16, "temperature": 1.0, "prompt": "Label: {text}"},
    "extract": {"kind": "choice", "choices": ["positive", "negative"]},
    "cascade": {"models": [HAIKU, OPUS]},
}


def patched(patch: dict[str, Any]) -> dict[str, Any]:
    """CASCADE with `patch` merged in, table by table (DELETE removes a key or table)."""
    raw = copy.deepcopy(CASCADE)
    for table, values in patch.items():
        if values is DELETE:
            raw.pop(table, None)
            continue
        for key, value in values.items():
            if value is DELETE:
                raw.setdefault(table, {}).pop(key, None)
            else:
                raw.setdefault(table, {})[key] = value
    return raw


def refused(patch: dict[str, Any]) -> str:
    with pytest.raises(JobFileError) as error:
        job_from_dict(patched(patch), source="c.toml")
    message = str(error.value)
    assert "\n" not in message and message.startswith("c.toml: ")
    return message


def test_a_cascade_loads_with_its_defaults_and_the_first_model_as_the_request_model() -> None:
    job = job_from_dict(patched({}), source="c.toml")
    assert job.cascade == CascadeSettings(models=(HAIKU, OPUS))
    assert job.cascade.samples == 3 and job.cascade.signal == "votes"
    assert job.request["model"] == HAIKU  # filled from models[0]
    assert job.cascade.samples_at(0) == 3 and job.cascade.samples_at(1) == 1


def test_every_key_is_read() -> None:
    settings: dict[str, Any] = {
        "models": [HAIKU, "claude-sonnet-4-6", OPUS],
        "samples": 5,
        "target": 0.9,
        "confidence": 0.99,
        "calibration_rows": 50,
        "signal": "votes",
    }
    job = job_from_dict(patched({"cascade": settings}), source="c.toml")
    assert job.cascade == CascadeSettings(**{**settings, "models": tuple(settings["models"])})


def test_the_request_model_may_name_the_first_stage() -> None:
    job = job_from_dict(patched({"request": {"model": HAIKU}}), source="c.toml")
    assert job.request["model"] == HAIKU


def test_the_sample_jobs_cascade_loads() -> None:
    job = load_job(REPO / "jobs" / "label_reviews_cascade.toml")
    assert job.cascade is not None and job.cascade.models == (HAIKU, OPUS)
    assert job.request["model"] == HAIKU


@pytest.mark.parametrize(
    "extract",
    [DELETE, {"kind": "text"}, {"kind": "json", "fields": {"label": "string"}}],
    ids=["no extract", "text", "json"],
)
def test_a_cascade_needs_choice_labels(extract: Any) -> None:
    patch: dict[str, Any] = {"extract": extract}
    if extract is not DELETE:
        patch = {"extract": {"choices": DELETE, **extract}}
    message = refused(patch)
    assert "[cascade]" in message and '"choice"' in message


@pytest.mark.parametrize("temperature", [DELETE, 0, 0.0])
def test_votes_need_a_temperature_above_zero(temperature: Any) -> None:
    message = refused({"request": {"temperature": temperature}})
    assert "[request] temperature" in message and "samples = 3" in message


def test_one_sample_or_a_stated_confidence_needs_no_temperature() -> None:
    for cascade in ({"samples": 1}, {"signal": "stated"}):
        job = job_from_dict(
            patched({"request": {"temperature": DELETE}, "cascade": cascade}), source="c.toml"
        )
        assert job.cascade is not None


@pytest.mark.parametrize(
    ("cascade", "key", "words"),
    [
        ({"models": [HAIKU]}, "[cascade] models", "2 or more"),
        ({"models": []}, "[cascade] models", "2 or more"),
        ({"models": [HAIKU, HAIKU]}, "[cascade] models", "twice"),
        ({"models": [HAIKU, OPUS, HAIKU]}, "[cascade] models", "twice"),
        ({"models": [HAIKU, ""]}, "[cascade] models", "empty"),
        ({"models": OPUS}, "[cascade] models", "array"),
        ({"models": [f"m{i}" for i in range(9)]}, "[cascade] models", "at most"),
        ({"models": DELETE, "samples": 3}, "[cascade] models", "required"),
        ({"signal": "vibes"}, "[cascade] signal", "votes"),
        ({"samples": 0}, "[cascade] samples", ">= 1"),
        ({"samples": 2.5}, "[cascade] samples", ""),
        ({"target": 0}, "[cascade] target", "> 0"),
        ({"target": 1.5}, "[cascade] target", "<= 1"),
        ({"confidence": 1}, "[cascade] confidence", "<="),
        ({"calibration_rows": 0}, "[cascade] calibration_rows", ">= 1"),
        ({"threshold": 0.9}, "[cascade] threshold", "unknown key"),
    ],
)
def test_a_bad_cascade_key_is_named(cascade: dict[str, Any], key: str, words: str) -> None:
    message = refused({"cascade": cascade})
    assert key in message and words in message


def test_a_request_model_other_than_the_first_is_refused() -> None:
    message = refused({"request": {"model": OPUS}})
    assert "[request] model" in message and HAIKU in message and OPUS in message


def test_a_model_override_column_is_refused() -> None:
    message = refused({"overrides": {"model": "model_column"}})
    assert "[overrides] model" in message and "[cascade]" in message


def test_pipeline_run_of_a_bad_cascade_exits_2_with_one_line(
    tmp_path: Path, cli: Callable[..., CompletedProcess[str]]
) -> None:
    (tmp_path / "in.csv").write_text("id,text\na,fine\n", encoding="utf-8")
    raw = patched({"cascade": {"models": [HAIKU, HAIKU]}})
    raw["job"] = {"input": str(tmp_path / "in.csv"), "output": str(tmp_path / "out")}
    job = write_job(tmp_path, raw)
    done = cli("run", str(job), "--base-url", "http://127.0.0.1:9")  # nothing listens there
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "[cascade] models" in line and "twice" in line
    assert not (tmp_path / "out").exists()


def test_an_empty_cascade_table_is_refused_for_its_missing_models() -> None:
    message = refused({"cascade": {"models": DELETE}})
    assert "[cascade] models" in message
