"""The HTML report's pure pieces: nice ticks, tick labels, histogram bins, the Wilson
interval, the accuracy figures (shared with the terminal report), exact money, and the
escaping of text and of embedded JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import polars as pl
import pytest

from pipeline.reports.accuracy import INVALID, accuracy_figures, gold_report, wilson_interval
from pipeline.reports.charts import (
    Bins,
    bins,
    esc,
    nice_step,
    nice_ticks,
    short,
    tick_texts,
)
from pipeline.reports.heatmap import heatmap
from pipeline.reports.html_report import embedded_json
from pipeline.reports.savings import batch_savings, cache_savings
from pipeline.reports.summary import derived, money, summarize


@pytest.mark.parametrize(
    ("low", "high", "integer", "ticks"),
    [
        (0, 1, False, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0, 0.024434, False, [0, 0.005, 0.01, 0.015, 0.02, 0.025]),
        (0, 97, True, [0, 20, 40, 60, 80, 100]),
        (0, 320, True, [0, 100, 200, 300, 400]),
        (47.5, 85.5, True, [40, 50, 60, 70, 80, 90]),
        (0, 3, True, [0, 1, 2, 3]),
        (0, 0.3, True, [0, 1]),  # integer steps: never below 1
        (0, 0, False, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),  # nothing: a unit axis
        (-3, 7, False, [-4, -2, 0, 2, 4, 6, 8]),
        (
            0.3,
            0.7,
            False,
            [0.3, 0.4, 0.5, 0.6, 0.7],
        ),  # no float noise: 0.3, not 0.30000000000000004
        (0, 1_234_567, False, [0, 500_000, 1_000_000, 1_500_000]),
        (0, 16.1, False, [0, 5, 10, 15, 20]),
    ],
)
def test_nice_ticks(low, high, integer, ticks):
    assert nice_ticks(low, high, integer=integer) == ticks


@pytest.mark.parametrize(
    ("raw", "step"),
    [
        (0.2, "0.2"),
        (0.21, "0.5"),
        (1, "1"),
        (1.01, "2"),
        (3, "5"),
        (7.6, "10"),
        (0.00049, "0.0005"),
    ],
)
def test_nice_step_is_1_2_or_5_times_a_power_of_ten(raw, step):
    assert nice_step(raw) == Decimal(step)


@pytest.mark.parametrize(
    ("ticks", "texts"),
    [
        ([0, 0.005, 0.01, 0.015], ["0", "0.005", "0.010", "0.015"]),
        ([0, 20, 40], ["0", "20", "40"]),
        ([0, 500_000, 1_000_000, 1_500_000], ["0", "0.5M", "1.0M", "1.5M"]),
        ([0, 5000, 10_000, 15_000], ["0", "5k", "10k", "15k"]),
        ([0, 2500.0, 5000.0], ["0", "2,500", "5,000"]),
    ],
)
def test_tick_texts(ticks, texts):
    assert tick_texts(ticks) == texts


def test_bins_count_integer_values_in_nice_widths():
    assert bins(pl.Series("t", [2, 2, 2])) == Bins(2, 1, (3,))
    assert bins(pl.Series("t", [49, 50, 51, 85, None])) == Bins(
        48, 2, (1, 2, *[0] * 16, 1)
    )  # 37 values wide: bins of 2 from 48, 85 in the last
    assert bins(pl.Series("t", [], dtype=pl.Int64)) is None


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [  # the Wilson score interval, z = 1.959964 (95%), worked out by hand to 4 places
        (81, 100, 0.7222, 0.8749),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
        (1, 1, 0.2065, 1.0),
        (247, 320, 0.7228, 0.8145),
    ],
)
def test_wilson_interval(successes, n, low, high):
    found = wilson_interval(successes, n)
    assert found == pytest.approx((low, high), abs=5e-5)
    assert 0 <= found[0] <= successes / n <= found[1] <= 1


def test_wilson_interval_needs_rows():
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def gold_frame() -> pl.DataFrame:
    """Gold a a a a b b c; labels a a a b b c None (one without a valid label)."""
    return pl.DataFrame(
        {
            "gold": ["a", "a", "a", "a", "b", "b", "c", None],
            "label": ["a", "a", "a", "b", "b", "c", None, "a"],
        }
    )


def test_accuracy_figures_square_matrix_invalid_column_and_per_class():
    figures = accuracy_figures(gold_frame(), "label", "gold")
    assert figures is not None
    assert figures.classes == ("a", "b", "c") and figures.columns == ("a", "b", "c", INVALID)
    assert figures.confusion == ((3, 1, 0, 0), (0, 1, 1, 0), (0, 0, 0, 1))
    assert (figures.rows, figures.correct, figures.invalid) == (7, 4, 1)  # no gold: left out
    a, b, c = figures.per_class
    assert (a.precision, a.recall, a.support, a.predicted) == (1.0, 0.75, 4, 3)
    assert a.f1 == pytest.approx(2 * 0.75 / 1.75)
    assert (b.precision, b.recall, b.f1) == (0.5, 0.5, 0.5)
    assert (c.precision, c.recall, c.f1, c.support, c.predicted) == (0.0, 0.0, 0.0, 1, 1)
    assert figures.interval == wilson_interval(4, 7)
    assert accuracy_figures(gold_frame(), "label", "missing") is None
    assert accuracy_figures(gold_frame().filter(pl.col("gold").is_null()), "label", "gold") is None


def test_terminal_accuracy_shows_the_same_figures():
    text = gold_report(gold_frame(), "label", "gold")
    low, high = wilson_interval(4, 7)
    assert (
        f"Accuracy against gold: 57.1% (4 of 7 rows with a gold label; 1 without a valid "
        f"label; 95% interval {low:.1%} to {high:.1%})" in text
    )
    confusion = text.split("Confusion")[1].split("Per class")[0].splitlines()
    assert confusion[1].split() == ["gold", "a", "b", "c", *INVALID.split()]
    assert [line.split()[1:] for line in confusion[3:6]] == [
        ["3", "1", "0", "0"],
        ["0", "1", "1", "0"],
        ["0", "0", "0", "1"],
    ]


def test_a_class_named_like_the_gold_column_still_tabulates():
    frame = pl.DataFrame({"gold": ["gold", "x"], "label": ["gold", "gold"]})
    assert "Confusion" in gold_report(frame, "label", "gold")


def test_money_is_exact_or_rounded_half_up():
    assert money(Decimal("0.024434")) == "$0.024434"
    assert money(Decimal("1234.50")) == "$1,234.5"
    assert money(Decimal("-0.0011035")) == "\u2212$0.0011035"
    assert money(Decimal("0.00000001875")) == "$0.00000001875"  # 11 places: any real cost
    assert money(Decimal("0.00021000000000000014")) == "$0.00021"  # a sum of noisy floats
    assert derived(Decimal("0.07635625")) == "$0.076356"  # 6 places
    assert derived(Decimal("0.0000425")) == "$0.000043"  # half up
    assert derived(Decimal("1234.5678")) == "$1,234.57"


def test_summary_sums_costs_exactly():
    costs = [0.1, 0.2, 0.000076, None]  # 0.1 + 0.2 in floats is 0.30000000000000004
    results = pl.DataFrame(
        {
            "status": ["ok", "ok", "ok", "error"],
            "model": ["m", "m", "n", None],
            "cost_usd": costs,
            "input_tokens": [1, 2, 3, None],
            "output_tokens": [1, 1, 1, None],
            "cache_creation_input_tokens": [0, 0, 0, None],
            "cache_read_input_tokens": [0, 0, 0, None],
            "finished_at": [datetime(2026, 1, 1, 12, 0, s, tzinfo=UTC) for s in (0, 5, 9, 10)],
            "price_table_version": ["v1"] * 4,
        }
    )
    s = summarize(results, {"job": "j"}, 6, cache_savings(results), batch_savings(results))
    assert s.cost == Decimal("0.300076") and s.unpriced == 0  # an error is not unpriced
    assert s.mean_cost == Decimal("0.100025333333")  # 12 significant digits
    assert s.per_thousand == s.mean_cost * 1000
    assert derived(s.projected) == "$0.900228"  # 0.300076 + 6 x 0.100025(3)
    assert (s.ok, s.error, s.not_done, s.models) == (3, 1, 6, (("m", 2), ("n", 1)))
    assert (s.last - s.first).total_seconds() == 10 and s.prices == ("v1",)


def test_text_is_escaped_in_text_and_attributes():
    hostile = "<script>alert(1)</script>\"&<>'"
    assert esc(hostile) == "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&amp;&lt;&gt;&#x27;"
    svg = heatmap([hostile], [hostile], [[2]], (hostile, hostile), hostile)
    assert "<script" not in svg and 'data-gold="&lt;script&gt;' in svg


def test_embedded_json_cannot_close_its_script():
    data = {"label": "</script><script>alert(1)</script><!-- & \u2028"}
    text = embedded_json(data)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == data


def test_short_cuts_at_the_end_or_in_the_middle():
    assert short("negative", 20) == "negative"
    assert short("abcdefghij", 6) == "abcde\u2026"
    assert short("claude-haiku / positive", 12, middle=True) == "claud\u2026sitive"


def test_a_gold_label_spelled_like_the_no_label_column_is_a_class_of_its_own():
    results = pl.DataFrame({"gold": ["a", "(no label)", "a"], "label": ["a", None, "(no label)"]})
    figures = accuracy_figures(results, "label", "gold")
    assert figures is not None
    assert (figures.rows, figures.correct, figures.invalid) == (3, 1, 1)
    assert figures.classes == ("(no label)", "a") and len(set(figures.columns)) == 3
