"""Helpers for end-to-end tests: job files on disk, and the CLI run in this process
(`run_in_process`, the `cli` fixture) or as a real process (`run_cli`, `start_cli`: only
where the process is the point: a signal, a kill, a resource limit, Ray, the entry point)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODEL = "claude-haiku-4-5-20251001"


@dataclass(frozen=True)
class Cluster:
    """The session's local Ray cluster (conftest's `cluster` fixture)."""

    address: str  # for a `pipeline run --ray` child: RAY_ADDRESS
    tag: str  # in the environment of each of its processes: ours, and no one else's


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # strings (JSON escapes are TOML escapes), numbers


def write_job(directory: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path = directory / "job.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def label_job(directory: Path, input_path: Path, **overrides: dict[str, Any]) -> Path:
    """A labelling job over `input_path` (columns id, text) writing to directory/out."""
    sections: dict[str, dict[str, Any]] = {
        "job": {
            "name": "t",
            "input": str(input_path),
            "id_column": "id",
            "output": str(directory / "out"),
            "keep_columns": ["text"],
        },
        "request": {
            "model": MODEL,
            "max_tokens": 16,
            "temperature": 0,
            "prompt": "Review: {text}\nAnswer with one word: positive, negative or neutral.",
        },
        "limits": {"concurrency": 8, "max_retries": 8},
        "extract": {"kind": "choice", "choices": ["positive", "negative", "neutral"]},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    return write_job(directory, sections)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "AISA_API_KEY": "sk-test-key", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO,
        env=full_env,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def start_cli(
    job: Path, base_url: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`pipeline run` in the background (to signal or kill it); stderr piped."""
    full_env = {**os.environ, "AISA_API_KEY": "sk-test-key", **(env or {})}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            str(job),
            "--base-url",
            base_url,
            "--no-progress",
            *extra,
        ],
        cwd=REPO,
        env=full_env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run_in_process(
    capsys: Any, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in this process, as `run_cli` runs it in another (same key, same working
    directory, same result shape) without an interpreter's start-up each time. `capsys`:
    pytest's fixture; `env` is laid over the environment for the command, as for
    `run_cli`, and taken away after it."""
    from unittest import mock

    from pipeline.cli import main

    capsys.readouterr()  # what came before is not this command's
    overlay = {"AISA_API_KEY": "sk-test-key", **(env or {})}
    with mock.patch.dict(os.environ, overlay), contextlib.chdir(REPO):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's own exits: --help, --version, usage errors
            code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["pipeline", *args], code, captured.out, captured.err)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    """Poll `condition` until it holds (AssertionError naming `what` after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.05)


class StderrLines:
    """A child's stderr read line by line as it comes (a thread), so a test can wait for a
    line, then still have the whole text once the child has exited."""

    def __init__(self, child: subprocess.Popen[str]) -> None:
        assert child.stderr is not None
        self._stream = child.stderr
        self._lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self._lines.append(line)

    def has(self, text: str) -> bool:
        return any(text in line for line in list(self._lines))

    def text(self, timeout: float = 60.0) -> str:
        """Everything the child wrote (waits for its stderr to close)."""
        self._thread.join(timeout)
        return "".join(self._lines)


def tagged_processes(tag: str, cmdline: bytes = b"") -> list[int]:
    """Pids of the processes (not this one) with `tag` in their environment and `cmdline`
    in their command line: the ones a test started, never anyone else's."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if tag.encode() in (entry / "environ").read_bytes() and (
                cmdline in (entry / "cmdline").read_bytes()
            ):
                found.append(int(entry.name))
        except OSError:
            continue
    return found
