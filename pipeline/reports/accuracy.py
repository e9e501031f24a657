"""Labels against gold labels: accuracy, a confusion matrix and per-class precision /
recall / F1, for jobs that name a `gold_column`."""

from __future__ import annotations

import polars as pl

from pipeline.reports.tables import text_table

INVALID = "(no label)"


def gold_report(results: pl.DataFrame, label: str, gold: str) -> str:
    """The accuracy section of a report; empty when the columns are not in the output."""
    if label not in results.columns or gold not in results.columns:
        return ""
    rows = results.filter(pl.col(gold).is_not_null()).select(
        pl.col(gold).cast(pl.String).alias("gold"),
        pl.col(label).cast(pl.String).fill_null(INVALID).alias("label"),
    )
    if rows.is_empty():
        return ""
    correct = int((rows["gold"] == rows["label"]).sum())
    lines = [
        f"\nAccuracy against {gold}: {correct / rows.height:.1%} ({correct:,} of "
        f"{rows.height:,} rows with a gold label; "
        f"{int((rows['label'] == INVALID).sum()):,} without a valid label)\n"
    ]
    classes = sorted(set(rows["gold"]) | set(rows["label"]) - {INVALID})
    confusion = (
        rows.group_by("gold", "label")
        .len()
        .pivot(on="label", index="gold", values="len")
        .fill_null(0)
        .sort("gold")
    )
    columns = [c for c in [*classes, INVALID] if c in confusion.columns]
    lines.append(f"\nConfusion (rows: {gold}, columns: {label})\n")
    lines.append(text_table(confusion.select("gold", *columns).rename({"gold": gold})))
    lines.append("\nPer class\n")
    lines.append(text_table(_per_class(rows, classes)))
    return "".join(lines)


def _per_class(rows: pl.DataFrame, classes: list[str]) -> pl.DataFrame:
    stats = []
    for name in classes:
        hit = int(((rows["gold"] == name) & (rows["label"] == name)).sum())
        predicted, actual = int((rows["label"] == name).sum()), int((rows["gold"] == name).sum())
        precision = hit / predicted if predicted else 0.0
        recall = hit / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        stats.append(
            {"class": name, "precision": precision, "recall": recall, "f1": f1, "support": actual}
        )
    return pl.DataFrame(stats)
