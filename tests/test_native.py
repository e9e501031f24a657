"""What a command's process tells the libraries it loads (commands/native.py), and which
runs need Ray's numpy (job/options.runs_on_ray)."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from pipeline.commands.native import leave_numpy_unloaded
from pipeline.job.load import job_from_dict
from pipeline.job.options import RunOptions, runs_on_ray


def _job(**run: Any) -> Any:
    raw: dict[str, Any] = {
        "job": {"input": "in.csv", "id_column": "id", "output": "out"},
        "request": {"model": "claude-haiku-4-5-20251001", "max_tokens": 8, "prompt": "{text}"},
    }
    if run:
        raw["run"] = run
    return job_from_dict(raw)


def test_a_fresh_process_marks_numpy_absent_before_pyarrow_loads(monkeypatch):
    monkeypatch.delitem(sys.modules, "pyarrow", raising=False)
    monkeypatch.delitem(sys.modules, "numpy", raising=False)
    leave_numpy_unloaded()
    assert "numpy" in sys.modules and sys.modules["numpy"] is None
    with pytest.raises(ImportError):  # what pyarrow and polars take as "not installed"
        import numpy  # noqa: F401


@pytest.mark.parametrize("loaded", ["pyarrow", "numpy"])
def test_a_process_that_loaded_pyarrow_or_numpy_keeps_what_it_has(monkeypatch, loaded):
    other = {"pyarrow": "numpy", "numpy": "pyarrow"}[loaded]
    module = type(sys)(loaded)
    monkeypatch.setitem(sys.modules, loaded, module)
    monkeypatch.delitem(sys.modules, other, raising=False)
    leave_numpy_unloaded()
    assert sys.modules[loaded] is module
    assert other not in sys.modules


@pytest.mark.parametrize(
    ("flag", "run", "expected"),
    [
        (None, {}, False),
        (None, {"engine": "local"}, False),
        (None, {"engine": "ray"}, True),
        (None, {"engine": "ray", "address": "ray://head:10001"}, True),
        ("local", {}, True),
        ("local", {"engine": "local"}, True),
    ],
)
def test_runs_on_ray_by_flag_or_job_file(flag, run, expected):
    assert runs_on_ray(_job(**run), RunOptions(ray=flag)) is expected
