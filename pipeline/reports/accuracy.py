"""Labels against gold labels, for jobs that name a `gold_column`: accuracy with its 95%
Wilson score interval, a confusion matrix and per-class precision / recall / F1.

`accuracy_figures` computes them once, as data; the terminal report (`gold_report`) and the
HTML page both show these figures, so the two cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass
from math import sqrt
from statistics import NormalDist
from typing import Any

import polars as pl

from pipeline.reports.tables import text_table

INVALID = "(no label)"  # the predicted "class" of a row without a valid label
Z95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054


@dataclass(frozen=True)
class ClassStats:
    name: str
    precision: float  # of the rows labelled this class, the share that are (0 when none)
    recall: float  # of the rows whose gold label is this class, the share labelled so
    f1: float
    support: int  # rows whose gold label is this class
    predicted: int  # rows labelled this class


@dataclass(frozen=True)
class Accuracy:
    gold_column: str
    label_column: str
    classes: tuple[str, ...]  # the confusion matrix's rows (gold), sorted
    columns: tuple[str, ...]  # its columns (predicted): the classes, then INVALID if any
    confusion: tuple[tuple[int, ...], ...]  # confusion[gold][predicted]: rows
    per_class: tuple[ClassStats, ...]

    @property
    def rows(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def correct(self) -> int:
        return sum(self.confusion[i][i] for i in range(len(self.classes)))

    @property
    def invalid(self) -> int:
        if len(self.columns) == len(self.classes):  # no column of rows without a label
            return 0
        return sum(row[-1] for row in self.confusion)

    @property
    def accuracy(self) -> float:
        return self.correct / self.rows

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.rows)

    @property
    def macro_f1(self) -> float:
        return sum(s.f1 for s in self.per_class) / len(self.per_class)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default): unlike p +- z*se it
    stays inside [0, 1] and is not empty at 0 or n successes."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval({successes}, {n}): needs 0 <= successes <= n > 0")
    p, z2 = successes / n, z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def accuracy_figures(results: pl.DataFrame, label: str, gold: str) -> Accuracy | None:
    """The figures over the rows with a gold label; None when the columns are not in the
    output or no row has a gold label. A row without a valid label counts as wrong."""
    if label not in results.columns or gold not in results.columns:
        return None
    rows = results.filter(pl.col(gold).is_not_null()).select(
        pl.col(gold).cast(pl.String).alias("gold"), pl.col(label).cast(pl.String).alias("label")
    )
    if rows.is_empty():
        return None
    # a row without a valid label is None here, never a string a label could also be
    counts = {(g, p): n for g, p, n in rows.group_by("gold", "label").len().iter_rows()}
    classes = tuple(sorted({g for g, _ in counts} | {p for _, p in counts if p is not None}))
    keys: tuple[str | None, ...] = classes
    if any(p is None for _, p in counts):
        keys = (*classes, None)
    confusion = tuple(tuple(counts.get((g, p), 0) for p in keys) for g in classes)
    columns = tuple(_invalid_name(classes) if k is None else k for k in keys)
    return Accuracy(gold, label, classes, columns, confusion, _per_class(classes, confusion))


def _invalid_name(classes: tuple[str, ...]) -> str:
    """The column of rows without a valid label: INVALID, unless a class is so named."""
    return _unique(INVALID, classes)


def _per_class(
    classes: tuple[str, ...], confusion: tuple[tuple[int, ...], ...]
) -> tuple[ClassStats, ...]:
    stats = []
    for i, name in enumerate(classes):
        hit, actual = confusion[i][i], sum(confusion[i])
        predicted = sum(row[i] for row in confusion)
        precision = hit / predicted if predicted else 0.0
        recall = hit / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        stats.append(ClassStats(name, precision, recall, f1, actual, predicted))
    return tuple(stats)


MOST_CLASSES = 30  # classes a confusion matrix shows; the rest fold into one "other"


@dataclass(frozen=True)
class Folded:
    """A confusion matrix cut to its largest classes, for people to read: with 500 labels
    the whole one is 250,000 cells (an 80 MB page). `rows` are the kept classes (by name),
    then `other` when classes were folded; `columns` the same, then the no-label column."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]
    folded: int  # classes in the "other" row and column (0: none, nothing folded)
    kept: tuple[int, ...]  # the kept classes' indices in `Accuracy.classes`

    @property
    def other(self) -> int | None:
        """The index of the "other" row (and column): its diagonal cell mixes right
        answers (a class labelled as itself) with confusions between folded classes."""
        return len(self.kept) if self.folded else None


def fold(a: Accuracy, most: int = MOST_CLASSES) -> Folded:
    """`a`'s confusion matrix with only its `most` largest classes (gold rows plus
    predictions), the others summed into one "other" row and column. Unchanged when it
    has no more than `most` classes."""
    n = len(a.classes)
    if n <= most:
        return Folded(a.classes, a.columns, a.confusion, 0, tuple(range(n)))
    size = {i: s.support + s.predicted for i, s in enumerate(a.per_class)}
    kept = tuple(sorted(sorted(range(n), key=lambda i: (-size[i], a.classes[i]))[:most]))
    rest = sorted(set(range(n)) - set(kept))
    other = _unique(f"({len(rest):,} other classes)", a.columns)

    def folded_row(row: tuple[int, ...]) -> tuple[int, ...]:
        # kept columns, the folded ones summed, then the no-label column when there is one
        return (*(row[j] for j in kept), sum(row[j] for j in rest), *row[n:])

    rows = [folded_row(a.confusion[i]) for i in kept]
    rows.append(tuple(map(sum, zip(*(folded_row(a.confusion[i]) for i in rest), strict=True))))
    names = tuple(a.classes[i] for i in kept)
    return Folded((*names, other), (*names, other, *a.columns[n:]), tuple(rows), len(rest), kept)


def _unique(name: str, taken: tuple[str, ...]) -> str:
    while name in taken:
        name = f"({name})"
    return name


def gold_report(results: pl.DataFrame, label: str, gold: str) -> str:
    """The accuracy section of the terminal report; empty when there is nothing to score."""
    figures = accuracy_figures(results, label, gold)
    if figures is None:
        return ""
    low, high = figures.interval
    folded = fold(figures)
    per_class = pl.DataFrame(
        [
            {"class": s.name, "precision": s.precision, "recall": s.recall, "f1": s.f1,
             "support": s.support}
            for s in figures.per_class
        ]
    )  # fmt: skip
    return (
        f"\nAccuracy against {gold}: {figures.accuracy:.1%} ({figures.correct:,} of "
        f"{figures.rows:,} rows with a gold label; {figures.invalid:,} without a valid label; "
        f"95% interval {low:.1%} to {high:.1%})\n"
        f"\nConfusion (rows: {gold}, columns: {label}{_largest(folded)})\n"
        f"{_confusion_table(gold, folded)}\nPer class\n{text_table(per_class)}"
    )


def _largest(folded: Folded) -> str:
    if not folded.folded:
        return ""
    return f"; the {len(folded.kept)} largest classes, {folded.folded:,} more as one"


def _confusion_table(gold: str, folded: Folded) -> str:
    # Positional column names: a class may be called like the gold column, or like another.
    names = [f"c{j}" for j in range(len(folded.columns))]
    frame = pl.DataFrame(
        {"gold": list(folded.rows)}
        | {n: [row[j] for row in folded.counts] for j, n in enumerate(names)},
        schema={"gold": pl.String} | {n: pl.Int64 for n in names},
    )
    headers = {"gold": gold} | dict(zip(names, folded.columns, strict=True))
    return text_table(frame, headers)


ACCURACY_COLUMNS = ("graded_rows", "accuracy", "accuracy_low", "accuracy_high")


def graded_columns(record: dict[str, Any], results: pl.DataFrame) -> tuple[str, str] | None:
    """The (label, gold) columns of an output whose job names a gold column (run.json)."""
    label, gold = record.get("label_column"), record.get("gold_column")
    if isinstance(label, str) and isinstance(gold, str) and {label, gold} <= set(results.columns):
        return label, gold
    return None


def graded_aggregates(graded: tuple[str, str] | None) -> list[pl.Expr]:
    """A group's rows with a gold label, and those labelled right (report.breakdown)."""
    if graded is None:
        return []
    label, gold = (pl.col(c).cast(pl.String) for c in graded)
    return [
        gold.is_not_null().sum().alias("graded_rows"),
        (label == gold).fill_null(False).sum().alias("_right"),
    ]


def group_accuracy(table: pl.DataFrame) -> pl.DataFrame:
    """Accuracy and its Wilson interval from each group's graded and right rows (the
    columns `graded_aggregates` made)."""
    counts = zip(table["_right"].to_list(), table["graded_rows"].to_list(), strict=True)
    figures = [(r / n, *wilson_interval(r, n)) if n else (None, None, None) for r, n in counts]
    return table.with_columns(
        pl.Series(name, [f[i] for f in figures], pl.Float64)
        for i, name in enumerate(ACCURACY_COLUMNS[1:])
    )
