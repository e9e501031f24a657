"""The command line's own surface: `--version`, bare `pipeline`, and the README's exit code
table agreeing with the codes the command line documents."""

from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any

from pipeline import cli
from pipeline.pricing import load_price_table
from tests.e2e import REPO, run_in_process


def test_version_names_the_release_and_its_price_table(capsys: Any) -> None:
    done = run_in_process(capsys, "--version")
    assert done.returncode == 0, done.stderr
    expected = f"pipeline {version('pipeline')} (price table {load_price_table().version})"
    assert done.stdout.strip() == expected


def test_bare_pipeline_prints_its_usage(capsys: Any) -> None:
    done = run_in_process(capsys)
    assert done.returncode == 2  # a usage mistake, like any other
    assert done.stderr.startswith("usage: pipeline")
    for command, what in (("run", "run (or resume) a job"), ("status", "how far a job got")):
        assert re.search(rf"^\s+{command}\s+{re.escape(what)}", done.stderr, re.M), done.stderr
    assert "the following arguments are required" not in done.stderr


def exit_codes_in_readme() -> set[str]:
    section = (REPO / "README.md").read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| (\d+(?: / \d+)?) \|", section, re.M))


def test_the_readme_lists_every_exit_code_the_command_line_documents() -> None:
    assert cli.__doc__ is not None
    documented = set(re.findall(r"(?:^|; )(\d+(?: / \d+)?) ", cli.__doc__, re.M))
    assert documented == {"0", "1", "2", "3", "4", "5", "6", "130 / 143"}
    assert exit_codes_in_readme() == documented
