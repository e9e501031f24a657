"""Prices and the cost columns: every model of API-NOTES.md "Prices", exact Decimal costs.

Expected costs are computed here independently, from the price strings of API-NOTES.md:
`tokens * USD-per-million / 1e6` in Decimal, converted to float once.
"""

from __future__ import annotations

import io
from decimal import Decimal

import pytest

from pipeline.errors import JobFileError
from pipeline.pricing import Price, PriceTable, costs, load_price_table
from pipeline.providers.base import Usage
from pipeline.schema import COST_COLUMNS, ROW_INDEX

M = Decimal(1_000_000)

# (model id or alias, input USD/MTok, output USD/MTok), as API-NOTES.md lists them.
PRICES = [
    ("claude-opus-4-7", "5", "25"),
    ("claude-opus-4-6", "5", "25"),
    ("claude-opus-4-5-20251101", "5", "25"),
    ("claude-opus-4-5", "5", "25"),
    ("claude-opus-4-1-20250805", "15", "75"),
    ("claude-opus-4-1", "15", "75"),
    ("claude-opus-4-20250514", "15", "75"),
    ("claude-opus-4-0", "15", "75"),
    ("claude-sonnet-4-6", "3", "15"),
    ("claude-sonnet-4-5-20250929", "3", "15"),
    ("claude-sonnet-4-5", "3", "15"),
    ("claude-sonnet-4-20250514", "3", "15"),
    ("claude-sonnet-4-0", "3", "15"),
    ("claude-3-7-sonnet-20250219", "3", "15"),
    ("claude-3-7-sonnet-latest", "3", "15"),
    ("claude-haiku-4-5-20251001", "1", "5"),
    ("claude-haiku-4-5", "1", "5"),
    ("claude-3-5-haiku-20241022", "0.80", "4"),
    ("claude-3-5-haiku-latest", "0.80", "4"),
    ("claude-3-haiku-20240307", "0.25", "1.25"),
]
LONG_CONTEXT_MODELS = [
    "claude-sonnet-4-5-20250929",
    "claude-sonnet-4-5",
    "claude-sonnet-4-20250514",
    "claude-sonnet-4-0",
]


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return load_price_table()


def expected_costs(
    inp: str, out: str, usage: Usage, *, batch: bool = False
) -> tuple[list[Decimal], dict[str, float]]:
    """The five columns, computed from first principles."""
    i, o = Decimal(inp), Decimal(out)
    factor = Decimal("0.5") if batch else Decimal(1)
    parts = [
        Decimal(usage.input_tokens) * i * factor / M,
        Decimal(usage.output_tokens) * o * factor / M,
        (
            Decimal(usage.cache_creation_5m_tokens) * i * Decimal("1.25")
            + Decimal(usage.cache_creation_1h_tokens) * i * 2
        )
        * factor
        / M,
        Decimal(usage.cache_read_input_tokens) * i * Decimal("0.1") * factor / M,
    ]
    total = sum(parts, Decimal(0))
    return parts, dict(zip(COST_COLUMNS, [*map(float, parts), float(total)], strict=True))


# --- the table -----------------------------------------------------------------------


@pytest.mark.parametrize(("model", "inp", "out"), PRICES)
def test_every_listed_model_and_alias_has_its_price(table, model, inp, out) -> None:
    price = table.lookup(model)
    assert price is not None, model
    assert (price.input, price.output) == (Decimal(inp), Decimal(out))


@pytest.mark.parametrize(("model", "inp", "out"), PRICES)
def test_cache_prices_follow_the_multipliers(table, model, inp, out) -> None:
    price = table.lookup(model)
    assert price is not None
    assert price.cache_write_5m == Decimal(inp) * Decimal("1.25")
    assert price.cache_write_1h == Decimal(inp) * 2
    assert price.cache_read == Decimal(inp) * Decimal("0.1")


@pytest.mark.parametrize("model", LONG_CONTEXT_MODELS)
def test_long_context_price_of_sonnet_4_and_4_5(table, model) -> None:
    price = table.lookup(model)
    assert price is not None and price.long_context is not None
    assert price.long_context_above == 200_000
    long = price.long_context
    assert (long.input, long.output) == (Decimal(6), Decimal("22.5"))
    assert (long.cache_write_5m, long.cache_write_1h, long.cache_read) == (
        Decimal("7.5"),
        Decimal(12),
        Decimal("0.6"),
    )


def test_the_version_is_the_one_the_data_file_states(table) -> None:
    import tomllib
    from importlib import resources

    text = resources.files("pipeline").joinpath("data/prices.toml").read_text("utf-8")
    assert table.version == tomllib.loads(text)["version"]  # one place says which prices


# --- costs() -------------------------------------------------------------------------

USAGES = [
    Usage(),
    Usage(input_tokens=1),
    Usage(output_tokens=1),
    Usage(input_tokens=1234, output_tokens=56),
    Usage(input_tokens=85406, output_tokens=6220, cache_read_input_tokens=3440),
    Usage(
        input_tokens=20,
        output_tokens=300,
        cache_creation_input_tokens=5000,
        cache_creation_5m_tokens=5000,
    ),
    Usage(
        input_tokens=7,
        output_tokens=999,
        cache_creation_input_tokens=3000,
        cache_creation_1h_tokens=3000,
    ),
    Usage(
        input_tokens=13,
        output_tokens=77,
        cache_creation_input_tokens=4096,
        cache_read_input_tokens=150_000,
        cache_creation_5m_tokens=1024,
        cache_creation_1h_tokens=3072,
    ),
    Usage(input_tokens=199_999, output_tokens=64_000),
]


@pytest.mark.parametrize("usage", USAGES)
@pytest.mark.parametrize(("model", "inp", "out"), PRICES)
def test_costs_are_exact(table, model, inp, out, usage) -> None:
    price = table.lookup(model)
    assert price is not None
    _, expected = expected_costs(inp, out, usage)
    assert costs(price, usage) == expected


@pytest.mark.parametrize(
    ("model", "inp", "out", "usage"),
    [
        (
            "claude-3-5-haiku-20241022",
            "0.80",
            "4",
            Usage(input_tokens=85406, output_tokens=6220, cache_read_input_tokens=3440),
        ),
        ("claude-opus-4-1", "15", "75", Usage(input_tokens=3, output_tokens=7)),
        (
            "claude-3-haiku-20240307",
            "0.25",
            "1.25",
            Usage(
                input_tokens=111,
                output_tokens=333,
                cache_creation_input_tokens=777,
                cache_read_input_tokens=999,
                cache_creation_5m_tokens=700,
                cache_creation_1h_tokens=77,
            ),
        ),
    ],
)
def test_cost_usd_is_the_exact_sum_rounded_once(table, model, inp, out, usage) -> None:
    parts, _ = expected_costs(inp, out, usage)
    got = costs(table.lookup(model), usage)
    assert got["cost_usd"] == float(sum(parts, Decimal(0)))


def test_the_float_sum_would_differ_so_the_test_above_can_fail(table) -> None:
    # For this usage the sum of the rounded columns is not the rounded exact sum.
    usage = Usage(input_tokens=85406, output_tokens=6220, cache_read_input_tokens=3440)
    got = costs(table.lookup("claude-3-5-haiku-20241022"), usage)
    float_sum = sum(got[c] for c in COST_COLUMNS[:4])
    assert float_sum != got["cost_usd"]
    assert got["cost_usd"] == 0.09348


@pytest.mark.parametrize("usage", USAGES[1:])
@pytest.mark.parametrize(("model", "inp", "out"), PRICES)
def test_batch_tier_halves_every_column(table, model, inp, out, usage) -> None:
    price = table.lookup(model)
    batch = Usage(**{**usage.__dict__, "service_tier": "batch"})
    _, expected = expected_costs(inp, out, usage, batch=True)
    assert costs(price, batch) == expected
    full = costs(price, usage)
    for column in COST_COLUMNS:
        assert costs(price, batch)[column] == pytest.approx(full[column] / 2)


@pytest.mark.parametrize("tier", [None, "standard", "priority", "standard_only", "future"])
def test_other_tiers_pay_full_price(table, tier) -> None:
    usage = Usage(input_tokens=1000, output_tokens=100, service_tier=tier)
    _, expected = expected_costs("1", "5", usage)
    assert costs(table.lookup("claude-haiku-4-5"), usage) == expected


@pytest.mark.parametrize(
    ("usage", "long"),
    [
        (Usage(input_tokens=200_000, output_tokens=1000), False),  # exactly 200K: base
        (Usage(input_tokens=200_001, output_tokens=1000), True),
        (Usage(input_tokens=10, output_tokens=5, cache_read_input_tokens=199_990), False),
        (Usage(input_tokens=10, output_tokens=5, cache_read_input_tokens=199_991), True),
        (
            Usage(
                input_tokens=1,
                output_tokens=5,
                cache_creation_input_tokens=200_000,
                cache_creation_5m_tokens=200_000,
            ),
            True,
        ),
        (
            Usage(
                input_tokens=100,
                output_tokens=5,
                cache_creation_input_tokens=100_000,
                cache_read_input_tokens=100_000,
                cache_creation_1h_tokens=100_000,
            ),
            True,
        ),
        (
            Usage(
                input_tokens=100_000,
                cache_creation_input_tokens=50_000,
                cache_read_input_tokens=50_000,
                cache_creation_5m_tokens=50_000,
            ),
            False,  # 200,000 in all: base
        ),
        (Usage(output_tokens=500_000), False),  # output tokens do not count
    ],
)
@pytest.mark.parametrize("model", LONG_CONTEXT_MODELS)
@pytest.mark.parametrize("batch", [False, True])
def test_sonnet_long_context_prices_every_token(table, model, usage, long, batch) -> None:
    if batch:
        usage = Usage(**{**usage.__dict__, "service_tier": "batch"})
    inp, out = ("6", "22.5") if long else ("3", "15")
    _, expected = expected_costs(inp, out, usage, batch=batch)
    assert costs(table.lookup(model), usage) == expected


@pytest.mark.parametrize(("model", "inp", "out"), [("claude-haiku-4-5", "1", "5")])
def test_models_without_long_context_keep_their_price_above_200k(table, model, inp, out) -> None:
    usage = Usage(input_tokens=300_000, output_tokens=1000)
    _, expected = expected_costs(inp, out, usage)
    assert costs(table.lookup(model), usage) == expected


# --- lookup: unknown models, fallbacks -----------------------------------------------


def test_unknown_model_returns_none_and_warns_exactly_once(capsys) -> None:
    table = load_price_table()
    assert table.lookup("claude-unknown-9") is None
    assert table.lookup("claude-unknown-9") is None
    assert table.lookup("claude-unknown-9", None) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "claude-unknown-9" in err
    assert "[pricing]" in err  # tells the user how to fix it
    # a second unknown model gets its own single warning
    assert table.lookup("claude-unknown-10") is None
    assert table.lookup("claude-unknown-10") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "claude-unknown-10" in err


def test_warnings_go_to_the_given_stream(capsys) -> None:
    base = load_price_table()
    stream = io.StringIO()
    table = PriceTable(base.version, base.prices, base.aliases, warn_to=stream)
    assert table.lookup("nope") is None
    assert table.lookup("nope") is None
    assert stream.getvalue().count("'nope'") == 1
    assert capsys.readouterr().err == ""


def test_known_models_do_not_warn(table, capsys) -> None:
    for model, _, _ in PRICES:
        table.lookup(model)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("model", "fallbacks", "expected_input"),
    [
        ("claude-haiku-4-5-20251001", ("claude-opus-4-1",), "1"),  # model first
        ("unknown-snapshot", ("claude-opus-4-1",), "15"),  # then the fallback
        ("unknown-snapshot", ("claude-sonnet-4-5",), "3"),  # fallback alias resolved
        ("unknown-snapshot", (None, "claude-haiku-4-5"), "1"),  # None skipped
        ("", ("claude-3-haiku-20240307",), "0.25"),  # empty answered model
        ("unknown-snapshot", ("other-unknown", "claude-opus-4-7"), "5"),
    ],
)
def test_lookup_uses_the_fallback(capsys, model, fallbacks, expected_input) -> None:
    table = load_price_table()
    price = table.lookup(model, *fallbacks)
    assert price is not None and price.input == Decimal(expected_input)
    assert capsys.readouterr().err == ""  # found via a fallback: no warning


def test_lookup_with_no_usable_fallback_returns_none(capsys) -> None:
    table = load_price_table()
    assert table.lookup("unknown-snapshot", None, "also-unknown") is None
    assert "unknown-snapshot" in capsys.readouterr().err


# --- with_overrides ------------------------------------------------------------------


def test_with_overrides_changes_version_and_price(table) -> None:
    over = table.with_overrides({"claude-haiku-4-5-20251001": {"input": 2.0, "output": 8.0}})
    assert over.version != table.version
    assert over.version.startswith(table.version)
    price = over.lookup("claude-haiku-4-5-20251001")
    assert (price.input, price.output) == (Decimal(2), Decimal(8))
    assert price.cache_write_5m == Decimal("2.5")
    assert price.cache_read == Decimal("0.2")
    # the alias resolves to the overridden id
    assert over.lookup("claude-haiku-4-5").input == Decimal(2)
    # the built-in table is untouched
    assert table.lookup("claude-haiku-4-5-20251001").input == Decimal(1)


def test_with_overrides_adds_a_new_model(table) -> None:
    over = table.with_overrides({"gateway-model": {"input": 0.5, "output": 1.5}})
    assert over.lookup("gateway-model").output == Decimal("1.5")
    usage = Usage(input_tokens=1_000_000, output_tokens=2_000_000)
    assert costs(over.lookup("gateway-model"), usage)["cost_usd"] == 3.5


def test_with_overrides_explicit_cache_prices(table) -> None:
    over = table.with_overrides(
        {"m": {"input": 1, "output": 2, "cache_write_5m": 9, "cache_write_1h": 10, "cache_read": 0}}
    )
    price = over.lookup("m")
    assert (price.cache_write_5m, price.cache_write_1h, price.cache_read) == (9, 10, 0)


def test_override_by_alias_prices_the_answered_snapshot(table) -> None:
    # The user writes the model they asked for ([request] model = "claude-haiku-4-5")
    # under [pricing]; the API answers with the snapshot id. The runner looks up
    # lookup(answered, requested): the user's price must win over the built-in one.
    over = table.with_overrides({"claude-haiku-4-5": {"input": 2, "output": 10}})
    price = over.lookup("claude-haiku-4-5-20251001", "claude-haiku-4-5")
    assert (price.input, price.output) == (Decimal(2), Decimal(10))


def test_with_overrides_version_is_deterministic_and_content_sensitive(table) -> None:
    a = table.with_overrides({"m": {"input": 1, "output": 2}})
    b = table.with_overrides({"m": {"input": 1, "output": 2}})
    c = table.with_overrides({"m": {"input": 1, "output": 3}})
    assert a.version == b.version != c.version


def test_no_overrides_keeps_the_version(table) -> None:
    assert table.with_overrides({}).version == table.version


@pytest.mark.parametrize(
    "override",
    [
        {"input": 1},  # output missing
        {"output": 1},  # input missing
        {"input": "cheap", "output": 1},
        {"input": 1, "output": "a lot"},
        {"input": 1, "output": 2, "cache_read": "free"},
    ],
)
def test_bad_override_raises_job_file_error(table, override) -> None:
    with pytest.raises(JobFileError, match=r"\[pricing\] my-model"):
        table.with_overrides({"my-model": override})


def test_price_from_mapping_defaults_cache_prices_to_multipliers() -> None:
    price = Price.from_mapping({"input": 0.8, "output": 4})
    assert price.input == Decimal(
        "0.8"
    )  # from the float's shortest repr, not 0.8000000000000000444
    assert price.cache_write_5m == Decimal("1.00")
    assert price.cache_write_1h == Decimal("1.6")
    assert price.cache_read == Decimal("0.08")


# --- cache writes without their 5m / 1h split --------------------------------------------


def test_writes_without_a_split_are_priced_at_the_ttl_the_request_asked_for(table) -> None:
    from pipeline.providers.anthropic import parse_usage

    price = table.lookup("claude-haiku-4-5-20251001")  # $1 input: 5m writes $1.25, 1h $2
    total_only = parse_usage(
        {"input_tokens": 10, "output_tokens": 1, "cache_creation_input_tokens": 1000}
    )
    assert total_only is not None
    hour = costs(price, total_only, "1h")
    assert hour["cache_write_cost_usd"] == 0.002  # 1,000 x $2 / M: 1-hour writes
    assert hour["cost_usd"] == float((10 * 1 + 1 * 5 + 1000 * 2) / M)
    assert costs(price, total_only, "5m")["cache_write_cost_usd"] == 0.00125
    assert costs(price, total_only)["cache_write_cost_usd"] == 0.00125  # no TTL asked: 5m
    # a split the answer gives is priced as given, whatever the request asked
    split = parse_usage(
        {"input_tokens": 10, "output_tokens": 1, "cache_creation_input_tokens": 1000,
         "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 0}}
    )  # fmt: skip
    assert split is not None
    assert costs(price, split, "1h")["cache_write_cost_usd"] == 0.00125


def test_the_output_row_says_the_writes_it_priced_as_one_hour(table) -> None:
    from pipeline.job.model import ExtractSpec
    from pipeline.labels.extract import Extractor
    from pipeline.providers.base import Answer
    from pipeline.run.outcome import RecordBuilder
    from pipeline.send.client import CallResult

    records = RecordBuilder([], Extractor(ExtractSpec()), table)
    records.write_ttl = lambda model: "1h"  # what a batch's auto breakpoint asks for
    usage = Usage(input_tokens=10, output_tokens=1, cache_creation_input_tokens=1000)
    answer = Answer("ok", "[]", "end_turn", "claude-haiku-4-5-20251001", usage, [])
    result = CallResult(answer, 200, None, None, 1, "req_1", 12.0)
    record = records.from_call({ROW_INDEX: 0}, "claude-haiku-4-5-20251001", result)
    assert (record["cache_creation_5m_tokens"], record["cache_creation_1h_tokens"]) == (0, 1000)
    assert record["cache_write_cost_usd"] == 0.002


# --- the job's [pricing] kept beside its results -------------------------------------------


def test_an_output_keeps_its_pricing_for_its_reports(table, tmp_path) -> None:
    from pipeline.pricing import output_prices, record_prices

    over = table.with_overrides({"gateway-model": {"input": 0.5, "output": 1.5}})
    record_prices(tmp_path, over)
    again = output_prices(tmp_path)
    assert again.version == over.version  # the same table: its rows are priced by it
    assert again.lookup("gateway-model") == over.lookup("gateway-model")
    record_prices(tmp_path / "plain", table)  # no [pricing]: nothing to keep
    assert not (tmp_path / "plain").exists()
    assert output_prices(tmp_path / "plain").version == table.version
