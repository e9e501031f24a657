"""errors.py holds every exception class the package defines, draws each in its tree, and
a --ray worker's error comes back on the driver as its own class, line and exit code."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from pipeline import errors

ROOT = Path(errors.__file__).resolve().parent


def _defined_exceptions() -> dict[str, str]:
    """Class name -> module file, for every class deriving from an exception, by name."""
    names = {n for n, v in vars(errors).items() if inspect.isclass(v)} | {
        "Exception",
        "ValueError",
        "RuntimeError",
        "BaseException",
    }
    found: dict[str, str] = {}
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b).split(".")[-1] for b in node.bases}
                if bases & names or any(b.endswith(("Error", "Exception")) for b in bases):
                    found[node.name] = str(path.relative_to(ROOT))
    return found


def test_every_exception_class_is_defined_in_errors_and_drawn_in_its_tree() -> None:
    defined = _defined_exceptions()
    elsewhere = {name: where for name, where in defined.items() if where != "errors.py"}
    assert not elsewhere
    tree = errors.__doc__ or ""
    drawn = set(re.findall(r"^ {4}[│├└─ ]*(\w+)", tree, re.M))
    assert not set(defined) - drawn


@pytest.mark.parametrize(
    "cls",
    [
        errors.ApiRejectsEverything,
        errors.ApiUnavailable,
        errors.BudgetReached,
        errors.LocalWriteError,
        errors.BatchesInProgress,
        errors.ClusterLost,
        errors.WorkerLost,
        errors.JobStopped,
        errors.UsageError,
        errors.JobFileError,
        errors.InputError,
    ],
)
def test_a_workers_error_is_its_own_class_on_the_driver(cls: type[errors.PipelineError]) -> None:
    sent = cls("the one line")
    back = errors.from_worker(type(sent).__name__, str(sent), sent.exit_code)
    assert type(back) is cls
    assert (str(back), back.exit_code) == ("the one line", sent.exit_code)


def test_an_interrupt_keeps_its_signal_and_an_unknown_name_stays_a_pipeline_error() -> None:
    back = errors.from_worker("Interrupted", "stopped by SIGTERM", 143)
    assert isinstance(back, errors.Interrupted)
    assert (back.signal_number, back.exit_code, str(back)) == (15, 143, "stopped by SIGTERM")
    other = errors.from_worker("NoSuchError", "odd", 7)
    assert type(other) is errors.PipelineError
    assert (str(other), other.exit_code) == ("odd", 7)
