"""`pipeline report FILE|DIR` on usage another tool wrote: Anthropic's and OpenAI's names,
nested or flattened, a tier column; costs equal to the published prices worked out here in
Decimal (never by the pricing code under test); the same tables, formats and HTML; missing
columns are one line and exit 2."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.reports.report import report

# Published prices, USD per million tokens (input, output); cache writes 1.25x (5 minutes)
# and 2x (1 hour) input, reads 0.1x input; the batch tier half of everything.
PRICES = {
    "claude-haiku-4-5-20251001": ("1", "5"),
    "claude-sonnet-4-6": ("3", "15"),
    "claude-opus-4-7": ("5", "25"),
    "claude-3-haiku-20240307": ("0.25", "1.25"),
}
WRITE_5M, WRITE_1H, READ, BATCH = Decimal("1.25"), Decimal(2), Decimal("0.1"), Decimal("0.5")
MILLION = Decimal(1_000_000)
KINDS = ("input", "output", "cache_write", "cache_read")


def expected(model: str, tokens: dict[str, int], batch: bool) -> dict[str, Decimal]:
    """Each cost column of one row: input, output, 5m and 1h writes, reads (our names)."""
    price_in, price_out = (Decimal(p) for p in PRICES[model])
    factor = BATCH if batch else Decimal(1)
    parts = {
        "input": tokens["input"] * price_in,
        "output": tokens["output"] * price_out,
        "cache_write": tokens["w5"] * price_in * WRITE_5M + tokens["w1"] * price_in * WRITE_1H,
        "cache_read": tokens["read"] * price_in * READ,
    }
    costs = {k: v * factor / MILLION for k, v in parts.items()}
    return {**costs, "total": sum(costs.values(), Decimal(0))}


def usage_rows(seed: int, count: int = 120) -> list[dict[str, Any]]:
    """Random rows of our own making: model, tokens of each kind, batch or not."""
    rng = random.Random(seed)
    return [
        {
            "model": rng.choice(list(PRICES)),
            "input": rng.randrange(1, 150_000),
            "output": rng.randrange(0, 4_000),
            "w5": rng.choice([0, 0, rng.randrange(1, 20_000)]),
            "w1": rng.choice([0, 0, rng.randrange(1, 20_000)]),
            "read": rng.choice([0, rng.randrange(1, 40_000)]),
            "batch": rng.random() < 0.4,
        }
        for _ in range(count)
    ]


def totals(rows: list[dict[str, Any]]) -> dict[str, dict[str, Decimal]]:
    """The expected cost columns per model, summed exactly."""
    out: dict[str, dict[str, Decimal]] = {}
    for r in rows:
        group = out.setdefault(r["model"], dict.fromkeys((*KINDS, "total"), Decimal(0)))
        for kind, cost in expected(r["model"], r, r["batch"]).items():
            group[kind] += cost
    return out


def assert_costs(text: str, rows: list[dict[str, Any]]) -> None:
    """The report's json (per model and TOTAL) against the independent computation."""
    report_rows = {r["model"]: r for r in json.loads(text, parse_float=Decimal)}
    want = totals(rows)
    assert set(report_rows) == {*want, "TOTAL"}
    for model, costs in want.items():
        got = report_rows[model]
        assert got["rows"] == sum(r["model"] == model for r in rows)
        for kind in KINDS:
            assert abs(got[f"{kind}_cost_usd"] - costs[kind]) <= Decimal("1e-12"), (model, kind)
        assert abs(got["cost_usd"] - costs["total"]) <= Decimal("1e-12"), model
    total = sum((c["total"] for c in want.values()), Decimal(0))
    assert abs(report_rows["TOTAL"]["cost_usd"] - total) <= Decimal("1e-12")
    batch_rows = [r for r in rows if r["batch"]]
    saved = sum((expected(r["model"], r, False)["total"] for r in batch_rows), Decimal(0))
    saved -= sum((expected(r["model"], r, True)["total"] for r in batch_rows), Decimal(0))
    assert abs(report_rows["TOTAL"]["saved_by_batch_usd"] - saved) <= Decimal("1e-12")


def anthropic_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Anthropic's names, flattened, the 5m / 1h split given; a service_tier column."""
    pl.DataFrame(
        {
            "request": [f"r{i}" for i in range(len(rows))],
            "model": [r["model"] for r in rows],
            "input_tokens": [r["input"] for r in rows],
            "output_tokens": [r["output"] for r in rows],
            "cache_creation_input_tokens": [r["w5"] + r["w1"] for r in rows],
            "cache_read_input_tokens": [r["read"] for r in rows],
            "cache_creation.ephemeral_5m_input_tokens": [r["w5"] for r in rows],
            "cache_creation.ephemeral_1h_input_tokens": [r["w1"] for r in rows],
            "service_tier": ["batch" if r["batch"] else "standard" for r in rows],
        }
    ).write_parquet(path)
    return path


def anthropic_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Anthropic's usage object as the API answers it, nested; only 5-minute writes, given
    as a total without the split (priced at 5 minutes); batch rows carry a batch_id."""
    lines = [
        {
            "model": r["model"],
            "batch_id": "msgbatch_1" if r["batch"] else None,
            "usage": {
                "input_tokens": r["input"],
                "output_tokens": r["output"],
                "cache_creation_input_tokens": r["w5"],
                "cache_read_input_tokens": r["read"],
            },
        }
        for r in rows
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def openai_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """OpenAI's names, nested: prompt_tokens include the cached ones; no cache writes."""
    lines = [
        {
            "id": f"chatcmpl-{i}",
            "model": r["model"],
            "tier": "batch" if r["batch"] else "default",
            "usage": {
                "prompt_tokens": r["input"] + r["read"],
                "completion_tokens": r["output"],
                "total_tokens": r["input"] + r["read"] + r["output"],
                "prompt_tokens_details": {"cached_tokens": r["read"]},
            },
        }
        for i, r in enumerate(rows)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def openai_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """OpenAI's names flattened (pandas' json_normalize), a boolean batch column."""
    pl.DataFrame(
        {
            "model": [r["model"] for r in rows],
            "prompt_tokens": [r["input"] + r["read"] for r in rows],
            "completion_tokens": [r["output"] for r in rows],
            "prompt_tokens_details.cached_tokens": [r["read"] for r in rows],
            "batch": [r["batch"] for r in rows],
        }
    ).write_csv(path)
    return path


def without_writes(rows: list[dict[str, Any]], one_hour: bool = True) -> list[dict[str, Any]]:
    return [{**r, "w1": 0, **({} if one_hour else {"w5": 0})} for r in rows]


def test_anthropic_names_flattened_in_parquet(tmp_path):
    rows = usage_rows(1)
    assert_costs(report(anthropic_parquet(tmp_path / "u.parquet", rows), ["model"], "json"), rows)


def test_anthropic_usage_nested_in_jsonl(tmp_path):
    rows = without_writes(usage_rows(2))
    assert_costs(report(anthropic_jsonl(tmp_path / "u.jsonl", rows), ["model"], "json"), rows)


def test_openai_names_nested_in_jsonl(tmp_path):
    rows = without_writes(usage_rows(3), one_hour=False)
    assert_costs(report(openai_jsonl(tmp_path / "u.jsonl", rows), ["model"], "json"), rows)


def test_openai_names_flattened_in_csv_through_the_cli(tmp_path, cli):
    rows = without_writes(usage_rows(4), one_hour=False)
    done = cli("report", str(openai_csv(tmp_path / "u.csv", rows)), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert_costs(done.stdout, rows)


def test_a_directory_of_both_styles_is_one_report_with_tables_and_html(tmp_path, cli):
    first, second = usage_rows(5, 40), without_writes(usage_rows(6, 40), one_hour=False)
    folder = tmp_path / "usage"
    folder.mkdir()
    anthropic_parquet(folder / "a.parquet", first)
    openai_csv(folder / "b.csv", second)
    page = tmp_path / "page.html"
    done = cli("report", str(folder), "--format", "json", "--html", str(page))
    assert done.returncode == 0, done.stderr
    assert_costs(done.stdout, first + second)
    table = cli("report", str(folder), "--by", "model,service_tier")
    assert table.returncode == 0, table.stderr
    assert "Cost (USD) by model, service_tier" in table.stdout and "TOTAL" in table.stdout
    assert "cost by model" in page.read_text().lower()


def test_prices_file_prices_a_model_the_table_lacks(tmp_path, cli):
    usage = tmp_path / "u.csv"
    usage.write_text("model,input_tokens,output_tokens\ngw-house,1000000,3\nclaude-opus-4-7,1,1\n")
    bare = cli("report", str(usage), "--format", "json")
    assert bare.returncode == 0, bare.stderr
    assert "no price for model 'gw-house'" in bare.stderr
    assert json.loads(bare.stdout)[-1]["unpriced_rows"] == 1
    prices = tmp_path / "prices.toml"
    prices.write_text('[pricing]\n"gw-house" = { input = 0.7, output = 2.1 }\n')
    done = cli("report", str(usage), "--format", "json", "--prices", str(prices))
    assert done.returncode == 0, done.stderr
    rows = {r["model"]: r for r in json.loads(done.stdout, parse_float=Decimal)}
    assert rows["gw-house"]["cost_usd"] == Decimal("0.7") + 3 * Decimal("2.1") / MILLION
    assert rows["TOTAL"]["unpriced_rows"] == 0


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ("model,tokens_in,tokens_out", ["input_tokens or prompt_tokens", "output_tokens"]),
        ("prompt_tokens,completion_tokens", ["model"]),
        ("model,input_tokens", ["output_tokens or completion_tokens"]),
    ],
)
def test_missing_columns_are_one_line_naming_them_and_exit_2(tmp_path, header, named, cli):
    usage = tmp_path / "u.csv"
    usage.write_text(f"{header}\n" + ",".join("1" for _ in header.split(",")) + "\n")
    done = cli("report", str(usage))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing usage column(s)" in lines[0], lines
    assert all(name in lines[0] for name in named), lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_bad_token_counts_and_bad_prices_are_one_line_exit_2(tmp_path, cli):
    usage = tmp_path / "u.csv"
    usage.write_text("model,input_tokens,output_tokens\nclaude-opus-4-7,many,1\n")
    done = cli("report", str(usage))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    usage.write_text("model,input_tokens,output_tokens\nclaude-opus-4-7,1,1\n")
    prices = tmp_path / "p.toml"
    prices.write_text('["gw"]\ninput = 1\n')  # no output price
    done = cli("report", str(usage), "--prices", str(prices))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "gw.output" in done.stderr


@pytest.mark.parametrize(
    "line",
    [
        '{"model": "claude-opus-4-7", "input_tokens": 1, "output_tokens": 1, "tier": ["x"]}',
        '{"model": "claude-opus-4-7", "input_tokens": 1.7, "output_tokens": 1}',
    ],
    ids=["list-cell", "fractional-count"],
)
def test_odd_cells_are_one_line_exit_2_never_an_internal_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str
) -> None:
    usage = tmp_path / "u.jsonl"
    usage.write_text(line + "\n", encoding="utf-8")
    assert main(["report", str(usage)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err, err
