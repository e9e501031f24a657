"""What a command's process tells the libraries it loads (commands/native.py): numpy left
unloaded by a command that is its process's own and will not start Ray (job/options.
runs_on_ray, the engine api.py picks)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

import pipeline.cli as cli
import pipeline.commands.checks as checks
from pipeline.api import _engine_for
from pipeline.commands.native import leave_numpy_unloaded
from pipeline.errors import UsageError
from pipeline.job.load import job_from_dict
from pipeline.job.options import RunOptions, runs_on_ray
from tests.e2e import label_job


def _job(mode: str = "online", **run: Any) -> Any:
    raw: dict[str, Any] = {
        "job": {"input": "in.csv", "id_column": "id", "output": "out"},
        "request": {"model": "claude-haiku-4-5-20251001", "max_tokens": 8, "prompt": "{text}"},
        "api": {"mode": mode},
    }
    if run:
        raw["run"] = run
    return job_from_dict(raw)


@pytest.fixture
def fresh_process(monkeypatch):
    """This process as a command's fresh one: neither pyarrow nor numpy loaded (put back,
    with the import machinery, after the test)."""
    monkeypatch.delitem(sys.modules, "pyarrow", raising=False)
    monkeypatch.delitem(sys.modules, "numpy", raising=False)
    monkeypatch.setattr(sys, "meta_path", sys.meta_path.copy())


def test_a_fresh_process_finds_numpy_with_no_loader(fresh_process):
    leave_numpy_unloaded()
    spec = importlib.util.find_spec("numpy")
    assert spec is None or spec.loader is None  # how polars tells numpy is not installed
    with pytest.raises(ImportError):  # how pyarrow does
        importlib.import_module("numpy")
    assert importlib.import_module("json")  # nothing else is kept out


@pytest.mark.parametrize("loaded", ["pyarrow", "numpy"])
def test_a_process_that_loaded_pyarrow_or_numpy_keeps_what_it_has(monkeypatch, loaded):
    monkeypatch.setitem(sys.modules, loaded, type(sys)(loaded))
    monkeypatch.delitem(sys.modules, {"pyarrow": "numpy", "numpy": "pyarrow"}[loaded], False)
    finders = sys.meta_path.copy()
    leave_numpy_unloaded()
    assert sys.meta_path == finders


CASES = [
    ("online", None, {}, False),
    ("online", None, {"engine": "local"}, False),
    ("online", None, {"engine": "ray"}, True),
    ("online", None, {"engine": "ray", "address": "ray://head:10001"}, True),
    ("online", "local", {}, True),
    ("online", "local", {"engine": "local"}, True),
    ("batch", None, {}, False),
    ("batch", None, {"engine": "ray"}, True),  # refused, as Ray
    ("batch", "local", {}, True),
]


@pytest.mark.parametrize(("mode", "flag", "run", "expected"), CASES)
def test_runs_on_ray_is_the_engine_the_run_picks(mode, flag, run, expected):
    job, options = _job(mode, **run), RunOptions(ray=flag)
    assert runs_on_ray(job, options) is expected
    if mode == "batch" and expected:
        with pytest.raises(UsageError, match="--ray runs rows online"):
            _engine_for(job, options)
    else:
        assert (_engine_for(job, options)[0] == "ray") is expected


@pytest.fixture
def unloads(monkeypatch) -> list[bool]:
    """Each time the command line leaves numpy unloaded; a run stopped before it starts."""
    calls: list[bool] = []
    monkeypatch.setattr(cli, "leave_numpy_unloaded", lambda: calls.append(True))

    def stop(*_: Any) -> None:
        raise UsageError("stopped before the run")

    monkeypatch.setattr(checks, "start_ahead", stop)
    return calls


def _as_command_line(monkeypatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["pipeline", *argv])
    return cli.main()


def test_only_the_process_s_own_command_line_leaves_numpy_unloaded(monkeypatch, unloads, capsys):
    assert cli.main(["models"]) == 0  # a test's or a notebook's call: its process's numpy
    assert unloads == []
    assert _as_command_line(monkeypatch, "models") == 0
    assert unloads == [True]


def test_a_run_leaves_numpy_unloaded_unless_it_runs_on_ray(
    tmp_path: Path, monkeypatch, unloads, capsys
):
    for key in ("AISA_API_KEY", "ANTHROPIC_API_KEY"):  # the pilot is refused, never sent
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "in.csv").write_text("id,text\nr1,fine\n")
    job = str(label_job(tmp_path, tmp_path / "in.csv"))
    assert _as_command_line(monkeypatch, "run", job, "--ray", "local") == 2
    assert unloads == []
    assert _as_command_line(monkeypatch, "run", job) == 2
    assert unloads == [True]
    assert _as_command_line(monkeypatch, "estimate", job, "--pilot", "1") == 2  # no key
    assert unloads == [True]  # a pilot runs rows, on Ray if the job says so
    assert _as_command_line(monkeypatch, "estimate", job) == 0
    assert unloads == [True, True]
