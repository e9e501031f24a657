"""What the tests of work started ahead (pipeline.ahead) share: waiting for it, forgetting
it (conftest does after every test: the registries are the process's), and the threads a
function was called on."""

from __future__ import annotations

import sys
import threading
from concurrent import futures
from typing import Any

import pytest


def wait_for_ahead() -> None:
    from pipeline import ahead

    _, running = futures.wait(list(ahead._started.values()), timeout=30)
    assert not running, "the work ahead did not end"


def forget_ahead() -> None:
    """Nothing of another test's left: its work ended and forgotten, its kept answers
    too (nothing to do where no test imported them)."""
    if "pipeline.ahead" in sys.modules:
        wait_for_ahead()
        sys.modules["pipeline.ahead"]._started.clear()
    if "pipeline.store.part_check" in sys.modules:
        sys.modules["pipeline.store.part_check"]._kept.clear()


def threads_calling(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[str]:
    """The name of the thread of each call of `owner.name` from now on."""
    threads: list[str] = []
    real = getattr(owner, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return threads
