"""`pipeline compare`: outputs of jobs over the same input, side by side, on the ids every
one of them answered (`status = ok`).

Per output: rows, invalid labels, accuracy against the first output's gold column with
its 95% Wilson interval, cost and cost per 1,000 rows (exact sums), latency p50. Per pair:
agreement, Cohen's kappa, the label flip matrix and, with gold, the exact McNemar test
and a verdict a person can act on (reports/agreement.py). A label that is invalid counts
as a wrong answer, and as the label "(no label)" in agreement and flips. What the
outputs do not share (ids, label columns, choices, gold) is said in notes.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.errors import UsageError
from pipeline.reports.accuracy import INVALID, wilson_interval
from pipeline.reports.agreement import PairCounts, cohen_kappa, pair_counts, verdict
from pipeline.reports.report import load_results, run_record
from pipeline.reports.savings import exact_sum
from pipeline.reports.tables import markdown, text_table, three_figures
from pipeline.store.manifest import recorded_manifest

ID_KEY, GOLD_KEY = "[job] id_column", "[job] gold_column"


@dataclass(frozen=True)
class Output:
    """One output, read: its rows answered `ok`, by id, and what its job says."""

    path: Path
    name: str  # the job's name, else the directory's
    id_column: str
    label_column: str
    gold_column: str | None
    choices: tuple[str, ...]
    rows: pl.DataFrame  # id, label, gold (or null), cost, latency, model


@dataclass(frozen=True)
class OutputFigures:
    output: str
    name: str  # the shortest end of its path that no other output's shares
    models: list[str]
    rows: int
    invalid: int
    accuracy: float | None
    accuracy_low: float | None
    accuracy_high: float | None
    cost_usd: Decimal | None  # None: no row of it was priced
    cost_per_1000_rows_usd: Decimal | None
    latency_p50_ms: float | None


@dataclass(frozen=True)
class PairFigures:
    a: int
    b: int
    agreement: float | None
    kappa: float | None
    counts: PairCounts | None  # None without gold
    flips: dict[tuple[str, str], int]
    verdict: str | None


@dataclass(frozen=True)
class Comparison:
    rows: int
    outputs: list[OutputFigures]
    pairs: list[PairFigures]
    gold_column: str | None
    notes: list[str] = field(default_factory=list)


def read_output(path: Path) -> Output:
    """An output directory as `compare` needs it; one line (exit 2) when it is not one."""
    results = load_results(path)
    record, manifest = run_record(path), recorded_manifest(path) or {}
    settings, extract = manifest.get("settings", {}), manifest.get("extract", {})
    id_column = settings.get(ID_KEY) or results.columns[0]  # an output's first: its ids
    label = record.get("label_column") or extract.get("column") or "label"
    for column in (id_column, label, "status"):
        if column not in results.columns:
            raise UsageError(f"{path}: its results have no column {column!r} to compare")
    gold = record.get("gold_column") or settings.get(GOLD_KEY)
    gold = gold if isinstance(gold, str) and gold in results.columns else None
    label_ok = pl.col("label_status") != "invalid" if "label_status" in results.columns else True
    rows = results.filter(pl.col("status") == "ok").select(
        pl.col(id_column).cast(pl.String).alias("id"),
        pl.when(label_ok).then(pl.col(label).cast(pl.String)).alias("label"),
        (pl.col(gold).cast(pl.String) if gold else pl.lit(None, pl.String)).alias("gold"),
        pl.col("cost_usd"),
        pl.col("latency_ms") if "latency_ms" in results.columns else pl.lit(None, pl.Float64),
        pl.col("model").cast(pl.String) if "model" in results.columns else pl.lit(None),
    )
    name = record.get("job") or record.get("name") or path.name
    choices = tuple(str(c) for c in extract.get("choices") or ())
    return Output(path, str(name), id_column, label, gold, choices, rows)


def compare(paths: list[Path]) -> Comparison:
    if len(paths) < 2:
        raise UsageError("compare needs two outputs or more")
    outputs = [read_output(p) for p in paths]
    shared = _shared_ids(outputs)
    gold_column = outputs[0].gold_column
    rows = [_in_order(o, shared) for o in outputs]  # each output's shared rows, one order
    gold = rows[0]["gold"].to_list() if gold_column else None
    names = short_names([o.path for o in outputs])
    figures = [_figures(o, r, gold, name) for o, r, name in zip(outputs, rows, names, strict=True)]
    labels = [[INVALID if v is None else v for v in r["label"].to_list()] for r in rows]
    pairs = [
        _pair(i, j, labels, gold, figures)
        for i, j in itertools.combinations(range(len(outputs)), 2)
    ]
    notes = _notes(outputs, shared)
    return Comparison(shared.len(), figures, pairs, gold_column, notes)


def _shared_ids(outputs: list[Output]) -> pl.Series:
    shared = outputs[0].rows["id"]
    for output in outputs[1:]:
        shared = shared.filter(shared.is_in(output.rows["id"].implode()))
    return shared.sort()


def _in_order(output: Output, shared: pl.Series) -> pl.DataFrame:
    """The output's rows of the shared ids, in the shared ids' order."""
    return pl.DataFrame({"id": shared}).join(output.rows, on="id", how="left")


def short_names(paths: list[Path]) -> list[str]:
    """Each path's last parts, as few as tell it from the others (out, out: a/out, b/out)."""
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        names = [str(Path(*p.parts[-depth:])) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def _figures(
    output: Output, rows: pl.DataFrame, gold: list[str | None] | None, name: str
) -> OutputFigures:
    """`output`'s figures over `rows`, its rows of the shared ids."""
    n = rows.height
    labels = rows["label"].to_list()
    cost = exact_sum(rows["cost_usd"])
    accuracy = low = high = None
    graded = [(lab, g) for lab, g in zip(labels, gold or [], strict=False) if g is not None]
    if graded:
        right = sum(lab == g for lab, g in graded)
        accuracy = right / len(graded)
        low, high = wilson_interval(right, len(graded))
    latency = rows["latency_ms"].drop_nulls()
    return OutputFigures(
        output=str(output.path),
        name=name,
        models=sorted(m for m in rows["model"].unique().to_list() if m is not None),
        rows=n,
        invalid=sum(label is None for label in labels),
        accuracy=accuracy, accuracy_low=low, accuracy_high=high,
        cost_usd=cost,
        cost_per_1000_rows_usd=cost * 1000 / n if n and cost is not None else None,
        latency_p50_ms=float(latency.median()) if latency.len() else None,  # type: ignore[arg-type]
    )  # fmt: skip


def _pair(
    i: int,
    j: int,
    labels: list[list[str]],
    gold: list[str | None] | None,
    figures: list[OutputFigures],
) -> PairFigures:
    a, b = labels[i], labels[j]
    agreement = sum(x == y for x, y in zip(a, b, strict=True)) / len(a) if a else None
    flips = dict(sorted(Counter(zip(a, b, strict=True)).items()))
    counts = line = None
    if gold is not None:
        graded = [(x, y, g) for x, y, g in zip(a, b, gold, strict=True) if g is not None]
        counts = pair_counts([x == g for x, _, g in graded], [y == g for _, y, g in graded])
        per_row_a, per_row_b = figures[i].cost_per_1000_rows_usd, figures[j].cost_per_1000_rows_usd
        ratio = float(per_row_b / per_row_a) if per_row_a and per_row_b is not None else None
        names = (figures[i].name, figures[j].name)
        line = verdict(counts, names, ratio)
    return PairFigures(i, j, agreement, cohen_kappa(a, b), counts, flips, line)


def _notes(outputs: list[Output], shared: pl.Series) -> list[str]:
    """What the outputs do not share, said."""
    notes = []
    for o in outputs:
        left_out = o.rows.height - shared.len()
        if left_out:
            notes.append(f"{o.path}: {left_out:,} answered rows left out (not answered by all)")
    first = outputs[0]
    for o in outputs[1:]:
        if o.label_column != first.label_column:
            notes.append(
                f"{o.path} labels {o.label_column!r} where {first.path} labels "
                f"{first.label_column!r}: compared as labels"
            )
        if set(o.choices) != set(first.choices) and o.choices and first.choices:
            extra = sorted(set(o.choices) ^ set(first.choices))
            notes.append(f"the choices differ ({', '.join(extra)} in one only)")
    if first.gold_column is None:
        notes.append(f"{first.path} has no gold column: no accuracy, no test of a difference")
    return notes


def comparison_json(c: Comparison) -> dict[str, Any]:
    """The contract's object (DESIGN.md, "Comparing outputs"); money as exact numbers."""
    return {
        "rows": c.rows,
        "outputs": [
            {
                "output": o.output,
                "models": o.models,
                "rows": o.rows,
                "invalid": o.invalid,
                "accuracy": o.accuracy,
                "accuracy_low": o.accuracy_low,
                "accuracy_high": o.accuracy_high,
                "cost_usd": o.cost_usd,
                "cost_per_1000_rows_usd": o.cost_per_1000_rows_usd,
                "latency_p50_ms": o.latency_p50_ms,
            }
            for o in c.outputs
        ],
        "pairs": [_pair_json(p) for p in c.pairs],
        "notes": c.notes,
    }


def _pair_json(p: PairFigures) -> dict[str, Any]:
    counts = p.counts
    return {
        "a": p.a, "b": p.b, "agreement": p.agreement, "kappa": p.kappa,
        "both_right": counts.both_right if counts else None,
        "only_a_right": counts.only_a_right if counts else None,
        "only_b_right": counts.only_b_right if counts else None,
        "both_wrong": counts.both_wrong if counts else None,
        "p_value": counts.p_value if counts else None,
        "verdict": p.verdict,
        "flips": [{"a": a, "b": b, "rows": n} for (a, b), n in p.flips.items()],
    }  # fmt: skip


def comparison_text(c: Comparison, *, as_markdown: bool = False) -> str:
    """The terminal table (or markdown): outputs, pairs with their verdicts, flips, notes."""
    gold = f" against {c.gold_column}" if c.gold_column else ""
    parts = [f"{len(c.outputs)} outputs on {c.rows:,} rows answered by all{gold}\n"]
    parts.append(_table(_outputs_frame(c), as_markdown, ("accuracy", "low", "high")))
    if c.pairs:
        parts.append(_table(_pairs_frame(c), as_markdown, ("agreement",)))
        parts += [f"{_names(c, p)}: {p.verdict}\n" for p in c.pairs if p.verdict]
        parts += [_flips(c, p, as_markdown) for p in c.pairs]
    parts += [f"note: {note}\n" for note in c.notes]
    return "\n".join(parts)


def _table(frame: pl.DataFrame, as_markdown: bool, percent: tuple[str, ...]) -> str:
    return markdown(frame) if as_markdown else text_table(frame, percent_columns=percent)


def _outputs_frame(c: Comparison) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "output": [o.output for o in c.outputs],
            "models": [", ".join(o.models) for o in c.outputs],
            "rows": [o.rows for o in c.outputs],
            "invalid": [o.invalid for o in c.outputs],
            "accuracy": [o.accuracy for o in c.outputs],
            "low": [o.accuracy_low for o in c.outputs],
            "high": [o.accuracy_high for o in c.outputs],
            "cost_usd": [o.cost_usd for o in c.outputs],
            "per_1000_rows_usd": [  # a quotient: to 3 significant figures (json: exact)
                None
                if o.cost_per_1000_rows_usd is None
                else three_figures(o.cost_per_1000_rows_usd)
                for o in c.outputs
            ],
            "latency_p50_ms": [
                None if o.latency_p50_ms is None else round(o.latency_p50_ms) for o in c.outputs
            ],
        },
        schema_overrides={"cost_usd": pl.Decimal(38, 18), "per_1000_rows_usd": pl.Decimal(38, 18)},
    )


def _pairs_frame(c: Comparison) -> pl.DataFrame:
    def count(p: PairFigures, name: str) -> int | None:
        return getattr(p.counts, name) if p.counts else None

    names = ("both_right", "only_a_right", "only_b_right", "both_wrong")
    return pl.DataFrame(
        {
            "a": [c.outputs[p.a].name for p in c.pairs],
            "b": [c.outputs[p.b].name for p in c.pairs],
            "agreement": [p.agreement for p in c.pairs],
            "kappa": [p.kappa for p in c.pairs],
            **{name: [count(p, name) for p in c.pairs] for name in names},
            "p_value": [p.counts.p_value if p.counts else None for p in c.pairs],
        },
        schema_overrides={name: pl.Int64 for name in names},
    )


def _names(c: Comparison, p: PairFigures) -> str:
    return f"{c.outputs[p.a].name} vs {c.outputs[p.b].name}"


def _flips(c: Comparison, p: PairFigures, as_markdown: bool) -> str:
    """The flip matrix: rows are A's labels, columns B's."""
    a_labels = sorted({a for a, _ in p.flips})
    b_labels = sorted({b for _, b in p.flips})
    frame = pl.DataFrame(
        {"A \\ B": a_labels, **{b: [p.flips.get((a, b), 0) for a in a_labels] for b in b_labels}}
    )
    return f"labels, {_names(c, p)} (rows: A's label, columns: B's)\n" + _table(
        frame, as_markdown, ()
    )
