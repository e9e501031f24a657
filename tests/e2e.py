"""Helpers for end-to-end tests: job files on disk and the real CLI as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODEL = "claude-haiku-4-5-20251001"


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


def run_in_process(capsys: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process, as `run_cli` runs it in another (same key, same result
    shape) without an interpreter's start-up each time. `capsys`: pytest's fixture."""
    from unittest import mock

    from pipeline.cli import main

    capsys.readouterr()  # what came before is not this command's
    with mock.patch.dict(os.environ, {"AISA_API_KEY": "sk-test-key"}):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's own exits: --help, --version, usage errors
            code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["pipeline", *args], code, captured.out, captured.err)
