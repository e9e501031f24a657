"""`compare` on outputs built by hand, whose every figure is known: shared ids, invalid
labels as wrong, exact costs, agreement, kappa, the McNemar counts, flips and notes."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from pipeline.errors import UsageError
from pipeline.reports.compare import compare, comparison_json, comparison_text
from pipeline.reports.tables import exact_json

GOLD = ["pos", "neg", "pos", "neu", "neg", "pos", "neg", "pos"]


def output(
    directory: Path,
    labels: list[str | None],
    *,
    ids: list[str] | None = None,
    status: list[str] | None = None,
    cost: float = 0.001,
    gold: bool = True,
    label_column: str = "label",
    model: str = "m-a",
) -> Path:
    ids = ids or [f"r{i}" for i in range(len(labels))]
    directory.mkdir(parents=True)
    frame = pl.DataFrame(
        {
            "id": ids,
            "status": status or ["ok"] * len(labels),
            label_column: labels,
            "label_status": ["ok" if v is not None else "invalid" for v in labels],
            "cost_usd": [cost] * len(labels),
            "latency_ms": [100.0 + i for i in range(len(labels))],
            "model": [model] * len(labels),
            **({"sentiment": GOLD[: len(labels)]} if gold else {}),
        }
    )
    frame.write_parquet(directory / "results.parquet")
    record = {"job": directory.name, "label_column": label_column}
    if gold:
        record["gold_column"] = "sentiment"
    (directory / "run.json").write_text(json.dumps(record))
    settings = {"[job] id_column": "id", "[job] gold_column": "sentiment" if gold else None}
    extract = {"kind": "choice", "column": label_column, "choices": ["pos", "neg", "neu"]}
    (directory / "job.json").write_text(json.dumps({"settings": settings, "extract": extract}))
    return directory


def test_two_outputs_on_the_rows_both_answered(tmp_path):
    # a: 6 of 8 right (row 7 invalid); b: 7 of 8 right; row 3 was an error in b
    a = output(tmp_path / "a", ["pos", "neg", "neg", "neu", "neg", "pos", "pos", None])
    b = output(
        tmp_path / "b",
        ["pos", "neg", "pos", "pos", "neg", "pos", "neg", "pos"],
        status=["ok", "ok", "ok", "error", "ok", "ok", "ok", "ok"],
        cost=0.003,
        model="m-b",
    )
    c = compare([a, b])
    assert c.rows == 7  # row 3 only a answered
    fa, fb = c.outputs
    assert (fa.rows, fa.invalid, fb.invalid) == (7, 1, 0)
    assert fa.accuracy == pytest.approx(4 / 7) and fb.accuracy == pytest.approx(7 / 7)
    assert fa.cost_usd == Decimal("0.007") and fb.cost_usd == Decimal("0.021")
    assert fb.cost_per_1000_rows_usd == Decimal("3")
    assert fa.models == ["m-a"] and fb.models == ["m-b"]
    (pair,) = c.pairs
    assert pair.counts is not None
    counts = pair.counts
    assert (counts.both_right, counts.only_a_right, counts.only_b_right, counts.both_wrong) == (
        4, 0, 3, 0,
    )  # fmt: skip
    assert pair.agreement == pytest.approx(4 / 7)
    assert pair.flips[("(no label)", "pos")] == 1 and pair.flips[("neg", "pos")] == 1
    assert counts.p_value == pytest.approx(0.25)  # 2 * (1/2)**3
    assert any("1 answered rows left out" in n for n in c.notes)


def test_the_json_has_the_contracts_keys(tmp_path):
    a = output(tmp_path / "a", GOLD)
    b = output(tmp_path / "b", ["pos"] * 8)
    data = comparison_json(compare([a, b]))
    assert data["rows"] == 8
    assert set(data["outputs"][0]) >= {
        "output", "models", "rows", "invalid", "accuracy", "accuracy_low", "accuracy_high",
        "cost_usd", "cost_per_1000_rows_usd",
    }  # fmt: skip
    assert set(data["pairs"][0]) >= {
        "a", "b", "agreement", "kappa", "both_right", "only_a_right", "only_b_right",
        "both_wrong", "p_value",
    }  # fmt: skip
    assert data["outputs"][0]["accuracy"] == 1.0 and data["pairs"][0]["only_a_right"] == 4
    text = exact_json(data)
    assert '"cost_usd": 0.008,' in text and json.loads(text)["rows"] == 8


def test_without_gold_there_is_agreement_but_no_accuracy_and_it_is_said(tmp_path):
    a = output(tmp_path / "a", GOLD, gold=False)
    b = output(tmp_path / "b", GOLD, gold=False, label_column="sentiment_label")
    c = compare([a, b])
    assert c.outputs[0].accuracy is None and c.pairs[0].counts is None
    assert c.pairs[0].agreement == 1.0
    assert any("no gold column" in n for n in c.notes)
    assert any("labels 'sentiment_label'" in n for n in c.notes)
    text = comparison_text(c)
    assert "2 outputs on 8 rows answered by all" in text


def test_three_outputs_give_every_pair(tmp_path):
    paths = [output(tmp_path / n, GOLD) for n in "abc"]
    assert [(p.a, p.b) for p in compare(paths).pairs] == [(0, 1), (0, 2), (1, 2)]


def test_one_output_or_a_directory_without_results_is_one_line(tmp_path):
    a = output(tmp_path / "a", GOLD)
    with pytest.raises(UsageError, match="two outputs or more"):
        compare([a])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"no results\.parquet"):
        compare([a, tmp_path / "empty"])


def test_the_html_page_has_a_card_each_the_flips_and_the_plot_all_escaped(tmp_path):
    from pipeline.reports.compare_html import write_comparison_html

    a = output(tmp_path / "a<script>x", ["pos", "neg", "neg", "neu", "neg", "pos", "pos", None])
    b = output(tmp_path / "b", GOLD, cost=0.003)
    c = compare([a, b])
    page_path = tmp_path / "compare.html"
    write_comparison_html(c, page_path)
    page = page_path.read_text()
    assert "<script>x" not in page and "a&lt;script&gt;x" in page
    assert page.count('class="card"') == 2  # one card an output
    assert 'class="heatmap"' in page  # the flips
    assert page.count('class="point"') == 2 and page.count('class="interval"') == 2


def wilson_by_hand(right: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def test_report_by_model_gives_accuracy_per_group_in_every_format(tmp_path):
    from pipeline.reports.report import report

    labels = ["pos", "neg", "neg", "neu", "neg", "pos", "pos", None]  # rows 0-3 model a
    out = output(tmp_path / "o", labels)
    frame = pl.read_parquet(out / "results.parquet").with_columns(
        pl.Series("model", ["a"] * 4 + ["b"] * 4), pl.lit("v1").alias("price_table_version")
    )
    for column in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                   "cache_read_input_tokens", "cache_creation_5m_tokens",
                   "cache_creation_1h_tokens"):  # fmt: skip
        frame = frame.with_columns(pl.lit(1).alias(column))
    for column in ("input_cost_usd", "output_cost_usd", "cache_write_cost_usd",
                   "cache_read_cost_usd"):  # fmt: skip
        frame = frame.with_columns(pl.lit(0.0).alias(column))
    frame.write_parquet(out / "results.parquet")
    rows = json.loads(report(out, ("model",), "json"))
    by_model = {r["model"]: r for r in rows}
    # a: rows 0-3 gold pos neg pos neu, labels pos neg neg neu: 3 of 4; b: 2 of 4
    assert by_model["a"]["accuracy"] == pytest.approx(0.75)
    assert by_model["b"]["accuracy"] == pytest.approx(0.5)
    assert by_model["TOTAL"]["graded_rows"] == 8
    low, high = wilson_by_hand(3, 4)
    assert (by_model["a"]["accuracy_low"], by_model["a"]["accuracy_high"]) == (
        pytest.approx(low), pytest.approx(high),
    )  # fmt: skip
    assert "accuracy_low" in report(out, ("model",), "csv").splitlines()[0]
    assert "Accuracy against the gold labels by model" in report(out, ("model",), "table")


def test_json_figures_equal_an_independent_computation_on_random_outputs(tmp_path):
    import random
    from fractions import Fraction
    from math import comb

    from tests.test_compare_stats import kappa_by_matrix

    rng = random.Random(23)
    n = 120
    gold = [rng.choice(["pos", "neg", "neu"]) for _ in range(n)]
    paths, frames = [], []
    for k, skill in enumerate((0.6, 0.8, 0.5)):
        labels = [
            g if rng.random() < skill else rng.choice(["pos", "neg", "neu", None]) for g in gold
        ]
        status = ["ok" if rng.random() < 0.9 else "error" for _ in range(n)]
        d = tmp_path / f"o{k}"
        d.mkdir()
        frame = pl.DataFrame({
            "id": [f"r{i}" for i in range(n)], "status": status, "label": labels,
            "label_status": ["ok" if v else "invalid" for v in labels],
            "cost_usd": [round(rng.uniform(1e-5, 1e-3), 9) for _ in range(n)],
            "latency_ms": [rng.uniform(50, 900) for _ in range(n)],
            "model": [f"m{k}"] * n, "gold_label": gold,
        })  # fmt: skip
        frame.write_parquet(d / "results.parquet")
        (d / "run.json").write_text(
            json.dumps({"label_column": "label", "gold_column": "gold_label"})
        )
        paths.append(d)
        frames.append(frame)
    data = json.loads(exact_json(comparison_json(compare(paths))))
    shared = sorted(
        set.intersection(*(set(f.filter(pl.col("status") == "ok")["id"]) for f in frames))
    )
    assert data["rows"] == len(shared)
    index = {f"r{i}": i for i in range(n)}
    labels = [[f["label"][index[i]] for i in shared] for f in frames]
    golds = [gold[index[i]] for i in shared]
    for k, out in enumerate(data["outputs"]):
        right = sum(x == g for x, g in zip(labels[k], golds, strict=True))
        low, high = wilson_by_hand(right, len(shared))
        assert out["accuracy"] == pytest.approx(right / len(shared), abs=1e-9)
        assert (out["accuracy_low"], out["accuracy_high"]) == (
            pytest.approx(low, abs=1e-9),
            pytest.approx(high, abs=1e-9),
        )
        assert out["invalid"] == sum(x is None for x in labels[k])
        cost = sum(Decimal(repr(frames[k]["cost_usd"][index[i]])) for i in shared)
        assert Decimal(str(out["cost_usd"])) == cost
    for pair in data["pairs"]:
        a = [x or "(no label)" for x in labels[pair["a"]]]
        b = [x or "(no label)" for x in labels[pair["b"]]]
        assert pair["kappa"] == pytest.approx(kappa_by_matrix(a, b), abs=1e-9)
        only_a = sum(
            x == g != y for x, y, g in zip(labels[pair["a"]], labels[pair["b"]], golds, strict=True)
        )
        only_b = sum(
            y == g != x for x, y, g in zip(labels[pair["a"]], labels[pair["b"]], golds, strict=True)
        )
        assert (pair["only_a_right"], pair["only_b_right"]) == (only_a, only_b)
        tail = sum(
            Fraction(comb(only_a + only_b, i), 2 ** (only_a + only_b))
            for i in range(min(only_a, only_b) + 1)
        )
        assert pair["p_value"] == pytest.approx(float(min(Fraction(1), 2 * tail)), abs=1e-9)


def test_an_output_with_every_label_invalid_is_wrong_everywhere(tmp_path):
    a = output(tmp_path / "a", GOLD)
    b = output(tmp_path / "b", [None] * 8)
    data = comparison_json(compare([a, b]))
    assert data["outputs"][1]["invalid"] == 8 and data["outputs"][1]["accuracy"] == 0.0
    assert data["pairs"][0]["only_a_right"] == 8 and data["pairs"][0]["agreement"] == 0.0
    assert data["pairs"][0]["verdict"].startswith("a is more accurate than b by 100.0 points")


def test_outputs_over_different_ids_and_choices_are_compared_on_what_they_share(tmp_path):
    a = output(tmp_path / "a", GOLD)
    b = output(tmp_path / "b", GOLD[2:], ids=[f"r{i}" for i in range(2, 8)])
    job = json.loads((b / "job.json").read_text())
    job["extract"]["choices"] = ["pos", "neg", "neu", "mixed"]
    (b / "job.json").write_text(json.dumps(job))
    c = compare([a, b])
    assert c.rows == 6
    assert any("2 answered rows left out" in n for n in c.notes)
    assert any("the choices differ (mixed in one only)" in n for n in c.notes)


def test_a_changed_job_refusal_suggests_a_new_output_as_well_as_fresh(tmp_path):
    from pipeline.store.manifest import Change, refusal

    message = str(refusal(tmp_path, Change("[request] model", "a", "b")))
    assert "--output DIR" in message and "--fresh" in message


def test_outputs_of_one_name_in_two_places_are_told_apart(tmp_path):
    a = output(tmp_path / "x" / "out", GOLD)
    b = output(tmp_path / "y" / "out", ["pos"] * 8)
    c = compare([a, b])
    assert [o.name for o in c.outputs] == ["x/out", "y/out"]
    assert "x/out vs y/out: no evidence of a difference on 8 rows" in comparison_text(c)
