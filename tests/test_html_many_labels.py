"""The HTML report with hundreds of labels stays small and quick: the confusion matrix shows
the largest classes and folds the rest into one "other" (a 503 x 503 heatmap was an 81 MB
page). Frames are built in memory, as a job's results.parquet has them."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from pipeline.pricing import load_price_table
from pipeline.reports.accuracy import MOST_CLASSES, accuracy_figures, fold, gold_report
from pipeline.reports.html_report import write_html

MB = 1_000_000


def results(rows: int, labels: int) -> pl.DataFrame:
    """`rows` answered rows over `labels` gold classes, a fifth of them labelled wrong."""
    i = pl.int_range(rows, dtype=pl.Int64, eager=True)
    names = pl.Series([f"class-{k:04d}" for k in range(labels)])
    gold = (i * 7919) % labels
    label = pl.when((i % 5) == 0).then((gold + 1 + i % 3) % labels).otherwise(gold)
    return pl.DataFrame({"id": i}).with_columns(
        pl.lit("ok").alias("status"),
        pl.lit("claude-haiku-4-5-20251001").alias("model"),
        (100 + i % 50).alias("input_tokens"),
        (1 + i % 3).alias("output_tokens"),
        *(pl.lit(0, pl.Int64).alias(f"cache_{c}") for c in ("creation_input_tokens",
          "read_input_tokens", "creation_5m_tokens", "creation_1h_tokens")),
        ((100 + i % 50) * 1e-6).alias("input_cost_usd"),
        ((1 + i % 3) * 5e-6).alias("output_cost_usd"),
        pl.lit(0.0).alias("cache_write_cost_usd"),
        pl.lit(0.0).alias("cache_read_cost_usd"),
        ((100 + i % 50) * 1e-6 + (1 + i % 3) * 5e-6).alias("cost_usd"),
        (200.0 + i % 97).alias("latency_ms"),
        (pl.lit(datetime(2026, 1, 1, tzinfo=UTC)) + pl.duration(milliseconds=i * 10))
        .alias("finished_at"),
        pl.lit(load_price_table().version).alias("price_table_version"),
        pl.lit(None, pl.String).alias("batch_id"),
        names.gather(label).alias("label"),
        names.gather(gold).alias("gold"),
        pl.lit("ok").alias("label_status"),
    )  # fmt: skip


def page(tmp_path: Path, frame: pl.DataFrame) -> tuple[str, float]:
    """The page of `frame` as `pipeline report --html` writes it, and the seconds it took."""
    out = tmp_path / "out"
    out.mkdir()
    record = {"job": "many", "label_column": "label", "gold_column": "gold"}
    (out / "run.json").write_text(json.dumps(record))
    start = time.perf_counter()
    write_html(frame, ["model"], tmp_path / "page.html", "many", out)
    return (tmp_path / "page.html").read_text(), time.perf_counter() - start


def test_500_labels_make_a_small_page_with_the_largest_classes_and_other(tmp_path):
    frame = results(20_000, 500)
    text, _ = page(tmp_path, frame)
    assert len(text.encode()) < 2 * MB  # was 81.6 MB
    cells = re.findall(r'<g class="cell" data-gold="([^"]*)" data-predicted="([^"]*)"', text)
    assert len(cells) == (MOST_CLASSES + 1) ** 2  # 30 classes and "other", every label valid
    assert "(470 other classes)" in text
    correct = (frame["label"] == frame["gold"]).sum()  # accuracy: of every row, not folded
    assert f"{correct:,} of 20,000 rows with a gold label are right" in text
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', text)[1])
    assert data["accuracy"]["classes_total"] == 500
    assert sum(map(sum, data["accuracy"]["confusion"])) == 20_000  # every row still counted


def test_1000_labels_and_a_million_rows_stay_under_a_few_mb_and_seconds(tmp_path):
    text, seconds = page(tmp_path, results(1_000_000, 1_000))
    assert len(text.encode()) < 3 * MB
    assert seconds < 15, seconds  # ~2.5 s alone on 2 cores; generous for a shared machine


def test_fold_keeps_the_largest_classes_and_every_count():
    rows = [("a", "a")] * 50 + [("b", "b")] * 30 + [("b", "c")] * 5 + [("c", "d")] * 2
    rows += [("d", "d"), ("e", "a"), ("e", None)]
    frame = pl.DataFrame(rows, schema=["gold", "label"], orient="row")
    figures = accuracy_figures(frame, "label", "gold")
    assert figures is not None
    folded = fold(figures, most=2)
    assert folded.rows == ("a", "b", "(3 other classes)") and folded.folded == 3
    assert folded.columns == ("a", "b", "(3 other classes)", "(no label)")
    assert folded.counts == ((50, 0, 0, 0), (0, 30, 5, 0), (1, 0, 3, 1))
    assert folded.other == 2
    assert fold(figures, most=5).counts == figures.confusion  # few classes: unchanged


def test_terminal_confusion_is_folded_too():
    labels = 40
    text = gold_report(results(400, labels), "label", "gold")
    confusion = text.split("Confusion")[1].split("Per class")[0]
    assert f"the {MOST_CLASSES} largest classes, {labels - MOST_CLASSES} more as one" in confusion
    assert len(confusion.splitlines()) == MOST_CLASSES + 1 + 4  # title, header, rule, blank
