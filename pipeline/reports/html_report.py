"""`pipeline report OUTPUT --html FILE`: one self-contained page (no network needed to view
it) with the report's tables and four charts drawn as inline SVG: cost by group,
cumulative cost over the run's time, the distribution of tokens a row, and latency
percentiles. A few lines of script only record that the charts laid out (for tests)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from pipeline.reports.report import SAVED, TERMINAL_SECTIONS, breakdown
from pipeline.reports.tables import cell_text, exact
from pipeline.store import durable

WIDTH, HEIGHT, PAD = 640, 260, 48
COLORS = ("#3b6ea5", "#d9822b", "#2e9e6a", "#a33b55")


def write_html(results: pl.DataFrame, by: Sequence[str], target: Path, title: str) -> None:
    table = breakdown(results, by)
    charts = [
        (
            "Cost by " + ", ".join(by),
            _bars(_labels(table, by), table["cost_usd"].fill_null(0), "USD"),
        ),
        ("Cumulative cost over the run", _cumulative(results)),
        ("Tokens a row", _histograms(results)),
        ("Latency percentiles", _percentiles(results)),
    ]
    sections = "".join(
        f'<section><h2>{html.escape(name)}</h2><svg class="chart" viewBox="0 0 {WIDTH} '
        f'{HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img">{svg}</svg></section>'
        for name, svg in charts
    )
    tables = "".join(
        f"<section><h2>{html.escape(name)}</h2>{_table(table, by, columns)}</section>"
        for name, columns in TERMINAL_SECTIONS
    )
    page = PAGE.format(
        title=html.escape(title),
        rows=results.height,
        saved=html.escape(_saved(table)),
        charts=sections,
        tables=tables,
    )
    durable.write_bytes(target, page.encode("utf-8"))


def _saved(table: pl.DataFrame) -> str:
    """The TOTAL row's saving by caching, exact (the cost table shows six decimals)."""
    saved = table[SAVED][-1] if table.height else None
    if saved is None:
        return "saved by caching: unknown (no priced row)"
    note = " (negative: the cache writes cost more than their reads saved)" if saved < 0 else ""
    return f"saved by caching: ${exact(saved)}{note}"


def _labels(table: pl.DataFrame, by: Sequence[str]) -> list[str]:
    return [
        " / ".join("" if v is None else str(v) for v in row) for row in table.select(by).iter_rows()
    ][:-1]  # not the TOTAL row


def _bars(labels: list[str], values: pl.Series, unit: str, digits: int = 4) -> str:
    values_list = [float(v) for v in values.to_list()[: len(labels)]]
    top = max(values_list, default=0.0) or 1.0
    step = (HEIGHT - 2 * PAD) / max(len(labels), 1)
    parts = []
    for i, (label, value) in enumerate(zip(labels, values_list, strict=True)):
        y = PAD + i * step
        width = (WIDTH - 3 * PAD - 120) * value / top
        parts.append(
            f'<text x="{PAD + 115}" y="{y + step * 0.6:.1f}" text-anchor="end">'
            f"{html.escape(label[:24])}</text>"
            f'<rect class="bar" x="{PAD + 120}" y="{y + step * 0.15:.1f}" width="{width:.1f}" '
            f'height="{step * 0.7:.1f}" fill="{COLORS[i % len(COLORS)]}"/>'
            f'<text x="{PAD + 125 + width:.1f}" y="{y + step * 0.6:.1f}">{value:,.{digits}f} {unit}'
            "</text>"
        )
    return "".join(parts) or _empty()


def _cumulative(results: pl.DataFrame) -> str:
    done = results.filter(pl.col("finished_at").is_not_null()).sort("finished_at")
    if done.height < 2:
        return _empty()
    start = done["finished_at"][0]
    seconds = [(t - start).total_seconds() for t in done["finished_at"]]
    costs = done["cost_usd"].fill_null(0).cum_sum().to_list()
    return _polyline(seconds, costs, "seconds since the first row", "USD")


def _histograms(results: pl.DataFrame) -> str:
    parts = []
    for i, column in enumerate(("input_tokens", "output_tokens")):
        values = results[column].drop_nulls().to_list()
        if not values:
            continue
        low, high = min(values), max(values)
        bins = 20
        width = max((high - low) / bins, 1)
        counts = [0] * bins
        for v in values:
            counts[min(int((v - low) / width), bins - 1)] += 1
        top = max(counts)
        x0 = PAD + i * (WIDTH - PAD) / 2
        bar = ((WIDTH - PAD) / 2 - PAD) / bins
        for b, count in enumerate(counts):
            h = (HEIGHT - 2 * PAD) * count / top
            parts.append(
                f'<rect class="bar" x="{x0 + b * bar:.1f}" y="{HEIGHT - PAD - h:.1f}" '
                f'width="{bar * 0.9:.1f}" height="{h:.1f}" fill="{COLORS[i]}"/>'
            )
        parts.append(f'<text x="{x0}" y="{HEIGHT - PAD + 18}">{column}: {low:,} .. {high:,}</text>')
    return "".join(parts) or _empty()


def _percentiles(results: pl.DataFrame) -> str:
    latency = results["latency_ms"].drop_nulls()
    if latency.is_empty():
        return _empty()
    marks = (50, 90, 95, 99)
    values = pl.Series([latency.quantile(q / 100) for q in marks])
    return _bars([f"p{q}" for q in marks], values, "ms", digits=1)


def _polyline(xs: list[float], ys: list[float], x_label: str, y_label: str) -> str:
    right, top = max(xs) or 1.0, max(ys) or 1.0
    span_x, span_y = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    points = " ".join(
        f"{PAD + span_x * x / right:.1f},{HEIGHT - PAD - span_y * y / top:.1f}"
        for x, y in zip(xs, ys, strict=True)
    )
    return (
        f'<polyline class="line" points="{points}" fill="none" stroke="{COLORS[0]}" '
        f'stroke-width="2"/>'
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" '
        'stroke="#888"/>'
        f'<text x="{PAD}" y="{HEIGHT - PAD + 18}">0</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - PAD + 18}" text-anchor="end">{right:,.0f} '
        f"{x_label}</text>"
        f'<text x="{PAD}" y="{PAD - 10}">{top:,.4f} {y_label}</text>'
    )


def _empty() -> str:
    return f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data</text>'


def _table(table: pl.DataFrame, by: Sequence[str], columns: dict[str, str]) -> str:
    names = [*by, *columns]
    head = "".join(f"<th>{html.escape(columns.get(n, n))}</th>" for n in names)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell_text(v))}</td>" for v in row) + "</tr>"
        for row in table.select(names).iter_rows()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
section {{ margin-bottom: 2em; }} svg text {{ font-size: 11px; fill: #333; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} tr:nth-child(even) {{ background: #f3f5f8; }}
</style></head>
<body><h1>{title}</h1>
<p>{rows:,} rows; <span class="saved">{saved}</span></p>{charts}{tables}
<script>
// Record what laid out, so a headless browser can tell that the charts rendered.
const charts = [...document.querySelectorAll("svg.chart")].map(svg => {{
  const marks = svg.querySelectorAll("rect.bar, polyline.line");
  return {{width: svg.getBoundingClientRect().width,
           marks: [...marks].filter(m => m.getBBox().width + m.getBBox().height > 0).length}};
}});
document.body.setAttribute("data-charts", JSON.stringify(charts));
</script></body></html>
"""
