"""`pipeline models` (the price table as text and json), the "did you mean" of a model
without a price, said once, the run's refusals before it starts, and every flag of every
command having a help text."""

from __future__ import annotations

import argparse
import json
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline import cli
from pipeline.commands.checks import is_loopback
from pipeline.commands.simulate import key_hint, simulate_parser
from pipeline.pricing import load_price_table
from tests.e2e import REPO, label_job

PRICES = tomllib.loads((REPO / "pipeline/data/prices.toml").read_text(encoding="utf-8"))
HAIKU = "claude-haiku-4-5-20251001"
MISSPELT = "claude-haiku-4-5-2025100"


def test_models_lists_every_model_with_its_prices_and_the_tables_version(cli: Any) -> None:
    done = cli("models")
    assert done.returncode == 0, done.stderr
    assert PRICES["version"] in done.stdout.splitlines()[0]
    for model in PRICES["models"]:
        assert any(line.startswith(model + " ") for line in done.stdout.splitlines()), model
    haiku = next(line for line in done.stdout.splitlines() if line.startswith(HAIKU))
    # input, output, 5m write, 1h write, read, batch input, batch output, cache minimum
    assert haiku.split()[1:] == ["1", "5", "1.25", "2", "0.1", "0.5", "2.5", "4,096"]
    assert "claude-haiku-4-5-20251001: also called claude-haiku-4-5" in done.stdout


def test_models_json_gives_the_price_table_exactly(cli: Any) -> None:
    done = cli("models", "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout, parse_float=Decimal)
    assert data["version"] == PRICES["version"]
    assert [m["model"] for m in data["models"]] == list(PRICES["models"])
    for entry in data["models"]:
        raw = PRICES["models"][entry["model"]]
        base = Decimal(str(raw["input"]))
        assert entry["input"] == base and entry["output"] == Decimal(str(raw["output"]))
        assert entry["cache_write_5m"] == base * Decimal("1.25")
        assert entry["cache_write_1h"] == base * 2 and entry["cache_read"] == base / 10
        assert entry["batch"]["output"] == Decimal(str(raw["output"])) / 2
        assert entry["min_cache_tokens"] == PRICES["cache_minimum"][entry["model"]]
    sonnet = next(m for m in data["models"] if m["model"] == "claude-sonnet-4-5-20250929")
    assert sonnet["long_context"]["above_input_tokens"] == 200000


def test_models_names_a_model_by_its_alias_and_refuses_an_unknown_one(cli: Any) -> None:
    done = cli("models", "claude-haiku-4-5", "--format", "json")
    assert [m["model"] for m in json.loads(done.stdout)["models"]] == [HAIKU]
    unknown = cli("models", MISSPELT)
    assert unknown.returncode == 2
    assert f"did you mean {HAIKU!r}?" in unknown.stderr


def test_a_model_without_a_price_suggests_the_near_one(capsys: Any) -> None:
    table = load_price_table()
    assert table.lookup(MISSPELT) is None and table.lookup(MISSPELT) is None
    err = capsys.readouterr().err
    assert err.count(f"no price for model {MISSPELT!r} (did you mean {HAIKU!r}?)") == 1
    assert table.did_you_mean("gpt-4o") == ""


def reviews(path: Path, n: int) -> Path:
    texts = [f"great product number {i}" for i in range(n)]
    pl.DataFrame({"id": [f"r{i}" for i in range(n)], "text": texts}).write_csv(path)
    return path


def test_a_misspelt_model_is_named_once_in_a_run(tmp_path: Path, sim: Any, cli: Any) -> None:
    job = label_job(tmp_path, reviews(tmp_path / "in.csv", 6), request={"model": MISSPELT})
    done = cli("run", str(job), "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(repr(MISSPELT)) == 1, done.stderr
    assert f"did you mean {HAIKU!r}?" in done.stderr


def test_a_budget_over_a_misspelt_model_is_one_line_before_anything_starts(
    tmp_path: Path, cli: Any
) -> None:
    job = label_job(
        tmp_path, reviews(tmp_path / "in.csv", 6),
        request={"model": MISSPELT}, limits={"max_cost_usd": 1.0},
    )  # fmt: skip
    done = cli("run", str(job), "--simulate")
    assert done.returncode == 2
    assert done.stderr.count(repr(MISSPELT)) == 1, done.stderr
    assert "cannot keep max_cost_usd" in done.stderr and f"did you mean {HAIKU!r}?" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing started


def test_run_job_refuses_a_budget_over_a_misspelt_model_as_the_cli_does(tmp_path: Path) -> None:
    """The notebook's and the API's callers get the CLI's refusal, before anything starts
    (not a stop at the first row, after a warning)."""
    from pipeline.api import run_job
    from pipeline.errors import UsageError

    job = label_job(
        tmp_path, reviews(tmp_path / "in.csv", 6),
        request={"model": MISSPELT}, limits={"max_cost_usd": 1.0},
    )  # fmt: skip
    with pytest.raises(UsageError, match="cannot keep max_cost_usd") as refused:
        run_job(job, simulate=True, show_progress=False)
    assert f"did you mean {HAIKU!r}?" in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "out").exists()  # nothing started


def test_a_local_base_url_without_a_key_says_which_variable_to_set(
    tmp_path: Path, cli: Any
) -> None:
    job = label_job(tmp_path, reviews(tmp_path / "in.csv", 2), api={"api_key_env": "MY_SIM_KEY"})
    done = cli("run", str(job), "--base-url", "http://127.0.0.1:9", env={"ANTHROPIC_API_KEY": ""})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "set MY_SIM_KEY" in lines[0] and "8+ characters" in lines[0]
    assert is_loopback("http://localhost:8000") and is_loopback("http://[::1]:80")
    assert not is_loopback("https://api.aisa.one")


def test_simulate_says_the_key_and_url_to_use() -> None:
    hint = key_hint("http://127.0.0.1:8765", None)
    assert (
        "AISA_API_KEY=sim-local-key pipeline run JOB.toml --base-url http://127.0.0.1:8765" in hint
    )
    assert '"$SIM_KEY"' in key_hint("http://127.0.0.1:8765", "SIM_KEY")


# --- every flag of every command says what it does --------------------------------------


def parsers() -> dict[str, argparse.ArgumentParser]:
    """The top parser, each subcommand's, and `simulate`'s own (cli.py hands its argv on)."""
    top = cli.build_parser()
    found = {"pipeline": top}
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update({f"pipeline {n}": p for n, p in action.choices.items()})
    found["pipeline simulate"] = simulate_parser()
    return found


@pytest.mark.parametrize("name", sorted(parsers()))
def test_every_flag_has_a_help_text(name: str) -> None:
    missing = [
        "/".join(a.option_strings) or a.dest
        for a in parsers()[name]._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()
    ]
    assert not missing, f"{name}: no help for {missing}"
