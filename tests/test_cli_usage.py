"""The command line's own surface: `--version`, bare `pipeline`, and the README's exit code
table agreeing with the codes the command line documents."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from importlib.metadata import version
from typing import Any

from pipeline import api, cli
from pipeline.job.load import RUN_ENGINES, SECTIONS
from pipeline.job.options import RunOptions
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


# --- the run options, declared once -------------------------------------------------


def run_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["run"]


def test_every_run_flag_is_a_run_option_or_the_commands_own() -> None:
    dests = {a.dest for a in run_parser()._actions if a.dest != "help"}
    options = {f.name for f in dataclasses.fields(RunOptions)}
    assert dests - set(cli.RUN_ONLY_FLAGS) == options - {"show_progress"}
    assert {"no_progress", "reparse", "job"} == set(cli.RUN_ONLY_FLAGS)


def test_the_command_line_builds_its_run_options_from_the_flags() -> None:
    args = run_parser().parse_args(["j.toml", "--rpm", "60", "--ray", "--no-progress", "--fresh"])
    options = cli.run_options(args)
    assert options == RunOptions(rpm=60.0, ray="local", fresh=True, show_progress=False)
    assert cli.run_options(run_parser().parse_args(["j.toml"])) == RunOptions()


def test_run_jobs_keywords_are_the_run_options_and_three_of_its_own() -> None:
    parameters = inspect.signature(api.run_job).parameters
    keywords = {n: p.default for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    defaults = {f.name: f.default for f in dataclasses.fields(RunOptions)}
    assert keywords == {**defaults, "api_key": None, "transport": None, "only_rows": None}


def test_the_engines_are_one_table_with_every_run_engine_a_job_file_may_name() -> None:
    assert set(api.ENGINES) == {"local", "batch", "ray"}
    assert set(RUN_ENGINES) <= set(api.ENGINES)  # [run] engine's names; batch is [api] mode
    for name in RUN_ENGINES:
        assert SECTIONS["run"]["engine"](name) == name
