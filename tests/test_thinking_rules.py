"""Extended thinking's rules (API-NOTES: the API answers 400 to every row that breaks
them) are checked before anything is sent: in the job file (one line naming the key,
exit 2), in [request.extra], and on each row's [overrides] (an error row, never sent)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.errors import JobFileError
from pipeline.input.render import RequestRenderer
from pipeline.job.fields import across_fields
from pipeline.job.load import job_from_dict
from pipeline.job.template import InvalidValue, Template
from pipeline.simulator.process import SimulatorProcess
from tests.e2e import MODEL, label_job, run_in_process

ENABLED = {"type": "enabled", "budget_tokens": 1024}
ADAPTIVE = {"type": "adaptive"}
DISABLED = {"type": "disabled"}
TOOLS = [{"name": "t", "input_schema": {"type": "object"}}]


def forcing(kind: str) -> dict[str, Any]:
    """Thinking on, with a tool and a tool_choice of `kind`."""
    choice = {"type": kind, **({"name": "t"} if kind == "tool" else {})}
    return {"thinking": ENABLED, "tools": TOOLS, "tool_choice": choice}


RULES = [
    # (id, request fields beside model and max_tokens = 4096, None or (key, words))
    ("temperature 0", {"thinking": ENABLED, "temperature": 0}, ("temperature", "must be 1")),
    ("temperature 0.7 adaptive", {"thinking": ADAPTIVE, "temperature": 0.7},
     ("temperature", "(got 0.7)")),
    ("temperature 1", {"thinking": ENABLED, "temperature": 1}, None),
    ("temperature 1.0", {"thinking": ENABLED, "temperature": 1.0}, None),
    ("no temperature", {"thinking": ENABLED}, None),
    ("top_k", {"thinking": ENABLED, "top_k": 40}, ("top_k", "cannot be set with thinking on")),
    ("top_p 0.9", {"thinking": ENABLED, "top_p": 0.9}, ("top_p", "must be >= 0.95")),
    ("top_p 0.95", {"thinking": ENABLED, "top_p": 0.95}, None),
    ("top_p 1", {"thinking": ENABLED, "top_p": 1}, None),
    ("tool_choice any", forcing("any"), ("tool_choice", 'type = "any" forces tool use')),
    ("tool_choice tool", forcing("tool"), ("tool_choice", 'type = "tool" forces tool use')),
    ("tool_choice auto", forcing("auto"), None),
    ("tool_choice none", forcing("none"), None),
    ("budget = max_tokens", {"thinking": {"type": "enabled", "budget_tokens": 4096}},
     ("thinking.budget_tokens", "must be < max_tokens (4096 >= 4096)")),
    ("disabled: anything goes",
     {**forcing("any"), "thinking": DISABLED, "temperature": 0, "top_k": 5, "top_p": 0.5}, None),
    ("no thinking: anything goes", {"temperature": 0, "top_k": 5, "top_p": 0.5}, None),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "broken"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_thinking_rules(fields: dict[str, Any], broken: tuple[str, str] | None) -> None:
    found = across_fields({"model": MODEL, "max_tokens": 4096, **fields})
    if broken is None:
        assert found is None
        return
    assert found is not None and found[0] == broken[0]
    assert broken[1] in found[1]


def job_dict(request: dict[str, Any], extract: dict[str, Any] | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "job": {"input": "in.csv"},
        "request": {"model": MODEL, "max_tokens": 4096, "prompt": "{text}", **request},
    }
    if extract is not None:
        raw["extract"] = extract
    return copy.deepcopy(raw)


@pytest.mark.parametrize(
    ("request_fields", "extract", "message"),
    [
        ({"temperature": 0, "thinking": ENABLED}, None, "[request] temperature: must be 1"),
        ({"temperature": 0, "extra": {"thinking": ENABLED}}, None, "[request] temperature"),
        ({"top_k": 5, "thinking": ADAPTIVE}, None, "[request] top_k: cannot be set"),
        (
            {"thinking": ENABLED, "tools": TOOLS},
            {"kind": "tool"},
            '[extract] kind: "tool" forces a tool call, which the API refuses with thinking on',
        ),
    ],
    ids=["temperature", "thinking in extra", "top_k adaptive", "tool extraction"],
)
def test_a_job_file_that_breaks_a_rule_is_one_line_naming_the_key(
    request_fields: dict[str, Any], extract: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(JobFileError) as refused:
        job_from_dict(job_dict(request_fields, extract), source="job.toml")
    assert str(refused.value).startswith(f"job.toml: {message}")
    assert "\n" not in str(refused.value)


def test_a_row_whose_override_breaks_a_rule_is_never_sent() -> None:
    renderer = RequestRenderer(
        {"model": MODEL, "max_tokens": 4096, "thinking": ENABLED},
        Template("{text}"),
        None,
        {"temperature": "temp"},
    )
    assert renderer.render({"text": "hi", "temp": "1"})["temperature"] == 1.0
    with pytest.raises(InvalidValue, match=r"temperature must be 1 .* this row's \[overrides\]"):
        renderer.render({"text": "hi", "temp": "0.2"})


def test_thinking_with_temperature_0_exits_2_before_sending_anything(
    tmp_path: Path, sim: SimulatorProcess, capsys: Any
) -> None:
    pl.DataFrame({"id": [f"r{i}" for i in range(20)], "text": ["fine"] * 20}).write_csv(
        tmp_path / "in.csv"
    )
    thinking = {"max_tokens": 2048, "temperature": 0, "thinking": ENABLED}
    job = label_job(tmp_path, tmp_path / "in.csv", request=thinking)
    sim.reset()
    done = run_in_process(capsys, "run", str(job), "--base-url", sim.base_url, "--no-progress")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "[request] temperature: must be 1 (or left out) with thinking on (got 0)" in line
    assert sim.stats()["requests"] == 0
    assert not (tmp_path / "out").exists()
