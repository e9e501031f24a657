"""`pipeline report OUTPUT --html FILE`: one self-contained page (no network, no external
script or font; it opens from disk) that a team can read at a glance:

- a summary card: the job, its model(s), rows ok / error / not done, the total cost, the
  cost per 1,000 rows, the projected total, the run's time span, the price table, and what
  the batch tier and caching saved;
- with gold labels: accuracy and its 95% Wilson interval, the confusion matrix as a
  heatmap (`heatmap`), per-class precision / recall / F1 (the figures of
  `accuracy.accuracy_figures`, as the terminal shows them);
- charts (`charts`): cost by group, latency percentiles, cumulative cost over the run with
  the projected total, tokens a row; then the report's tables.

Money on the page comes from exact Decimal sums. Every text from the data is escaped, in
text, SVG and attributes; the embedded JSON escapes `<`, `>` and `&`. A few lines of script
only record what laid out (for tests)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.cascade.account import cascade_account
from pipeline.exact import decimal_column
from pipeline.pricing import PriceTable, output_prices
from pipeline.reports import charts
from pipeline.reports.accuracy import Accuracy, Folded, accuracy_figures, fold, graded_columns
from pipeline.reports.charts import esc
from pipeline.reports.heatmap import heatmap
from pipeline.reports.job_card import job_facts
from pipeline.reports.report import (
    PERCENT_COLUMNS,
    breakdown,
    for_people,
    rows_total,
    run_record,
    sections,
)
from pipeline.reports.savings import batch_savings, cache_savings, exact_sum
from pipeline.reports.summary import Summary, derived, money, summarize, summary_card
from pipeline.reports.tables import cell_text, exact
from pipeline.store import durable

MOST_GROUPS = 12  # bars in "cost by group"; the costliest when there are more


def write_html(
    results: pl.DataFrame,
    by: Sequence[str],
    target: Path,
    title: str,
    output_dir: Path | None = None,
    prices: PriceTable | None = None,
) -> None:
    """The page of `results` grouped `by`; `output_dir`'s run record, when given, adds the
    job's name, the rows not done and the gold labels' accuracy. `prices`: the table that
    priced the rows (default: the output's, with its job's [pricing]; else the built-in)."""
    record = run_record(output_dir) if output_dir is not None else {}
    not_done = 0 if output_dir is None else rows_total(output_dir, 0) - results.height
    if prices is None and output_dir is not None:
        prices = output_prices(output_dir)  # with its job's [pricing]
    savings, batch = cache_savings(results, prices), batch_savings(results, prices)
    summary = summarize(results, record, max(0, not_done), savings, batch)
    label, gold = record.get("label_column"), record.get("gold_column")
    figures = (
        accuracy_figures(results, label, gold)
        if isinstance(label, str) and isinstance(gold, str)
        else None
    )
    graded = graded_columns(record, results)
    table = breakdown(results, by, summary.not_done, savings, batch, graded)
    page = PAGE.format(
        title=esc(title),
        css=CSS + charts.CSS,
        summary=summary_card(summary, title, figures, job_facts(output_dir, record)),
        accuracy=("" if figures is None else accuracy_section(figures))
        + cascade_section(output_dir),
        charts=chart_sections(results, by, summary),
        tables=table_sections(for_people(table), by),
        data=embedded_json(_data(summary, figures)),
    )
    durable.write_bytes(target, page.encode("utf-8"))


def cascade_section(output_dir: Path | None) -> str:
    """A cascade's account (cascade.account: rows per stage, its cost against the last
    model alone, the guarantee) as a card; nothing for any other output."""
    account = cascade_account(output_dir) if output_dir is not None else None
    if not account:
        return ""
    return f'<section class="card wide"><h2>Cascade</h2><pre>{esc(account)}</pre></section>'


def accuracy_section(a: Accuracy) -> str:
    """Accuracy, the confusion matrix and the per-class table: of the largest classes only
    when there are many (`fold`: the page stays small and quick to draw with 1,000)."""
    low, high = a.interval
    folded = fold(a)
    matrix = heatmap(
        folded.rows,
        folded.columns,
        folded.counts,
        (f"gold: {a.gold_column}", f"predicted: {a.label_column}"),
        f"confusion matrix of {a.label_column} against {a.gold_column}",
        folded.other,
    )
    largest = (
        f" The {len(folded.kept)} largest of {len(a.classes):,} classes; the other "
        f"{folded.folded:,} as one (grey where they meet: right answers and confusions "
        "among them)."
        if folded.folded
        else ""
    )
    return (
        f'<section class="card wide"><h2>Accuracy against {esc(a.gold_column)}</h2>'
        f'<div class="headline"><span class="big">{a.accuracy:.1%}</span><span>{a.correct:,} '
        f"of {a.rows:,} rows with a gold label are right; 95% interval {low:.1%} \u2013 "
        f"{high:.1%} (Wilson score); {a.invalid:,} without a valid label</span></div>"
        f'<div class="pair"><figure><figcaption>Confusion matrix: rows are the gold label, '
        f"columns the predicted one; a cell's shade is its share of the row (blue: right, "
        f"orange: confused).{esc(largest)}</figcaption>{matrix}</figure>"
        f"<figure><figcaption>Per class{esc(_per_class_note(a, folded))}</figcaption>"
        f'<div class="scroll">{_per_class(a, folded)}</div>'
        "</figure></div></section>"
    )


def _per_class_note(a: Accuracy, folded: Folded) -> str:
    if not folded.folded:
        return ""
    largest, every = len(folded.kept), len(a.classes)
    return f" (the {largest} largest classes; the macro average is of all {every:,})"


def _per_class(a: Accuracy, folded: Folded) -> str:
    body = "".join(
        f"<tr><td>{esc(s.name)}</td><td>{s.precision:.3f}</td><td>{s.recall:.3f}</td>"
        f"<td>{s.f1:.3f}</td><td>{s.support:,}</td><td>{s.predicted:,}</td></tr>"
        for s in (a.per_class[i] for i in folded.kept)
    )
    return (
        '<table class="per-class"><thead><tr><th>class</th><th>precision</th><th>recall</th>'
        f"<th>F1</th><th>support</th><th>predicted</th></tr></thead><tbody>{body}</tbody>"
        f"<tfoot><tr><td>macro average</td><td>{_mean(a, 'precision'):.3f}</td>"
        f"<td>{_mean(a, 'recall'):.3f}</td><td>{a.macro_f1:.3f}</td><td>{a.rows:,}</td>"
        "<td></td></tr></tfoot></table>"
    )


def _mean(a: Accuracy, name: str) -> float:
    return float(sum(getattr(s, name) for s in a.per_class)) / len(a.per_class)


def chart_sections(results: pl.DataFrame, by: Sequence[str], s: Summary) -> str:
    groups, note = _cost_by_group(results, by)
    latency = results["latency_ms"].drop_nulls()
    marks = (50, 90, 95, 99)
    values = [float(latency.quantile(q / 100) or 0) for q in marks] if len(latency) else []
    cells = [
        ("Cost by " + ", ".join(by) + note, groups),
        (
            "Latency percentiles",
            charts.bar_chart(
                [f"p{q}" for q in marks] if values else [],
                values,
                [f"{v:,.1f} ms" for v in values],
                "latency (ms)",
                "latency percentiles",
                charts.TEAL,
            ),
        ),
        ("Cumulative cost over the run", _cumulative(results, s)),
        ("Input tokens a row", _tokens(results, "input", charts.BLUE)),
        ("Output tokens a row", _tokens(results, "output", charts.ORANGE)),
    ]
    return "".join(
        f'<section class="card{" wide" if i == 2 else ""}"><h2>{esc(name)}</h2>{svg}</section>'
        for i, (name, svg) in enumerate(cells)
    )


def _tokens(results: pl.DataFrame, kind: str, color: str) -> str:
    return charts.histogram(
        results[f"{kind}_tokens"], f"{kind} tokens", f"{kind} tokens a row", color
    )


def _cost_by_group(results: pl.DataFrame, by: Sequence[str]) -> tuple[str, str]:
    """Bars of each group's exact cost: the MOST_GROUPS costliest when there are more."""
    costs = (
        results.with_columns(decimal_column("_cost", results["cost_usd"]))
        .group_by(list(by))
        .agg(pl.col("_cost").sum())
        .sort(list(by), nulls_last=True)
    )
    note = ""
    if costs.height > MOST_GROUPS:
        note = f" (the {MOST_GROUPS} costliest of {costs.height:,} groups)"
        costs = costs.sort("_cost", descending=True, nulls_last=True).head(MOST_GROUPS)
    labels = [
        " / ".join("(none)" if v is None else str(v) for v in r) for r in costs.select(by).rows()
    ]
    values: list[Decimal | None] = costs["_cost"].to_list()
    svg = charts.bar_chart(
        labels,
        [float(v or 0) for v in values],
        ["no price" if v is None else money(v) for v in values],
        "cost (USD)",
        "cost",
    )
    return svg, note


def _cumulative(results: pl.DataFrame, s: Summary) -> str:
    done = results.filter(pl.col("finished_at").is_not_null()).sort("finished_at")
    if done.height < 2:
        return charts.empty("cumulative cost", charts.FULL)
    start = done["finished_at"][0]
    # in polars, not a Python datetime a row: a million rows took seconds
    seconds = ((done["finished_at"] - start).dt.total_microseconds() / 1e6).to_list()
    costs = done["cost_usd"].fill_null(0).cum_sum().to_list()
    spent = exact_sum(done["cost_usd"]) or Decimal(0)
    projection = None
    if s.not_done and s.projected is not None and seconds[-1] > 0:
        rate = (done.height - 1) / seconds[-1]  # rows a second, as observed
        projection = charts.Mark(
            seconds[-1] + s.not_done / rate,
            float(s.projected),
            f"projected {derived(s.projected)} ({s.not_done:,} rows not done)",
        )
    far = max(seconds[-1], projection.x if projection else 0)
    unit, size = next(
        (u, n) for u, n in (("h", 3600), ("min", 60), ("s", 1)) if far >= 3 * n or n == 1
    )
    if projection is not None:
        projection = charts.Mark(projection.x / size, projection.y, projection.text)
    return charts.line_chart(
        [x / size for x in seconds],
        costs,
        (f"time since the first row ({unit})", "cost so far (USD)"),
        f"total {money(spent)}",
        "cumulative cost",
        projection,
    )


def table_sections(table: pl.DataFrame, by: Sequence[str]) -> str:
    return "".join(
        f'<section class="card wide"><h2>{esc(name)} by {esc(", ".join(by))}</h2>'
        f"{_table(table, by, columns)}</section>"
        for name, columns in sections(table)
    )


def _table(table: pl.DataFrame, by: Sequence[str], columns: dict[str, str]) -> str:
    names = [*by, *(c for c in columns if c in table.columns)]
    head = "".join(f"<th>{esc(columns.get(n, n))}</th>" for n in names)
    percent = [n in PERCENT_COLUMNS for n in names]
    body = "".join(
        "<tr>"
        + "".join(f"<td>{esc(cell_text(v, p))}</td>" for v, p in zip(row, percent, strict=True))
        + "</tr>"
        for row in table.select(names).iter_rows()
    )
    table_html = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table_html}</div>'


def _data(s: Summary, figures: Accuracy | None) -> dict[str, Any]:
    """The page's figures for machines: money as exact decimal strings."""

    def text(value: Decimal | None) -> str | None:
        return None if value is None else exact(value)

    data: dict[str, Any] = {
        "job": s.job, "models": dict(s.models), "rows": s.rows, "ok": s.ok, "error": s.error,
        "not_done": s.not_done, "cost_usd": text(s.cost), "projected_cost_usd": text(s.projected),
        "saved_by_caching_usd": text(s.cache_saved), "saved_by_batch_usd": text(s.batch_saved),
        "price_table_versions": list(s.prices),
    }  # fmt: skip
    if figures is not None:  # the matrix as the page shows it: folded when large
        folded = fold(figures)
        data["accuracy"] = {
            "gold_column": figures.gold_column, "label_column": figures.label_column,
            "correct": figures.correct, "rows": figures.rows, "interval": figures.interval,
            "classes": folded.rows, "columns": folded.columns, "confusion": folded.counts,
            "classes_total": len(figures.classes), "classes_folded": folded.folded,
        }  # fmt: skip
    return data


def embedded_json(data: object) -> str:
    """JSON safe inside a <script> element: no `</script>`, `<!--` or `&` can appear."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


CSS = """
:root { --ink: #1f2933; --muted: #52606d; --line: #e4e7eb; --bg: #f4f6f9; --blue: #2f6db5; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink); font: 15px/1.5 -apple-system,
  BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans",
  "Liberation Sans", sans-serif; font-variant-numeric: tabular-nums; }
main { max-width: 1200px; margin: 0 auto; padding: 28px 24px 48px; display: grid;
  grid-template-columns: 1fr 1fr; gap: 20px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 12px;
  padding: 20px 24px; box-shadow: 0 1px 2px rgba(31, 41, 51, .06); min-width: 0; }
.card.wide, .card.summary { grid-column: 1 / -1; }
h1 { margin: 0; font-size: 28px; line-height: 1.2; } h2 { margin: 0 0 12px; font-size: 17px; }
.eyebrow { color: var(--blue); font-size: 12px; font-weight: 700; letter-spacing: .08em;
  text-transform: uppercase; }
.sub { margin: 2px 0 18px; color: var(--muted); word-break: break-all; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(210px, 1fr)); gap: 14px; }
.tile { border: 1px solid var(--line); border-radius: 10px; padding: 12px 16px;
  background: #fafbfc; }
.tile-name { color: var(--muted); font-size: 13px; font-weight: 600; }
.tile-value { font-size: 26px; font-weight: 700; line-height: 1.3; }
.tile-note { color: var(--muted); font-size: 13px; }
.progress { display: flex; height: 6px; margin: 6px 0; border-radius: 3px; overflow: hidden;
  background: var(--line); } .progress .ok { background: #2e8b57; }
.progress .error { background: #c23934; } .progress .todo { background: #c9d2dc; }
.facts { margin: 18px 0 0; display: grid; grid-template-columns: 1fr 1fr; gap: 8px 28px; }
.facts div { display: flex; gap: 12px; } .facts dt { min-width: 90px; color: var(--muted);
  font-weight: 600; } .facts dd { margin: 0; word-break: break-word; }
.headline { display: flex; align-items: baseline; gap: 14px; margin-bottom: 12px; }
.headline .big { font-size: 34px; font-weight: 700; color: var(--blue); }
.pair { display: grid; grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); gap: 28px;
  align-items: start; } figure { margin: 0; min-width: 0; }
figcaption { color: var(--muted); font-size: 13px; margin-bottom: 8px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { padding: 6px 10px; text-align: right; border-bottom: 1px solid var(--line);
  white-space: nowrap; } th { color: var(--muted); font-weight: 600; }
td:first-child, th:first-child { text-align: left; white-space: normal; word-break: break-word; }
tbody tr:nth-child(even) { background: #f7f9fb; } tbody tr:last-child td { font-weight: 600; }
.per-class tbody tr:last-child td { font-weight: 400; } .per-class td { white-space: nowrap; }
.per-class th, .per-class td { padding: 6px 8px; }
tfoot td { font-weight: 600; border-top: 2px solid var(--line); }
@media (max-width: 860px) { main, .pair, .facts { grid-template-columns: 1fr; } }
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>{css}</style></head>
<body><main>{summary}{accuracy}{charts}{tables}</main>
<script type="application/json" id="report-data">{data}</script>
<script>
// Record what laid out, so a headless browser can tell that the charts rendered.
const seen = el => {{ const b = el.getBBox(); return b.width + b.height > 0; }};
const charts = [...document.querySelectorAll("svg.chart")].map(svg => ({{
  width: svg.getBoundingClientRect().width,
  marks: [...svg.querySelectorAll("rect.bar, polyline.line")].filter(seen).length,
  ticks: [...svg.querySelectorAll("g.tick text")].filter(seen).length,
  projection: svg.querySelectorAll("line.projection").length,
}}));
document.body.setAttribute("data-charts", JSON.stringify(charts));
document.body.setAttribute("data-cells", [...document.querySelectorAll("svg.heatmap g.cell rect")]
  .filter(seen).length);
document.body.setAttribute("data-scripts", document.scripts.length);
</script></body></html>
"""
