"""`pipeline compare ... --html FILE`: one self-contained page (no network, no script of
its own but the layout record the report page has): a card per output, each pair's
verdict and label flips as a heatmap (`heatmap`), and accuracy against cost per 1,000
rows as a plot, each output a point with its 95% interval. Built from the same
`Comparison` the terminal and json show, so they cannot disagree; every text from the
data is escaped."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.reports import charts
from pipeline.reports.charts import BLUE, HALF, Axis, Frame, esc, short, svg, x_axis, y_axis
from pipeline.reports.compare import (
    Comparison,
    OutputFigures,
    PairFigures,
    comparison_json,
)
from pipeline.reports.heatmap import heatmap
from pipeline.reports.html_report import CSS, PAGE, embedded_json
from pipeline.reports.summary import money
from pipeline.reports.tables import exact_json
from pipeline.store import durable


def write_comparison_html(c: Comparison, target: Path) -> None:
    """The page of `c`, its json embedded for machines."""
    title = f"Comparison of {len(c.outputs)} outputs"
    gold = f", accuracy against {esc(c.gold_column)}" if c.gold_column else ""
    head = (
        f'<section class="card summary"><div class="eyebrow">pipeline compare</div>'
        f'<h1>{esc(title)}</h1><p class="sub">{c.rows:,} rows answered by every output'
        f"{gold}</p>{''.join(f'<p>{esc(n)}</p>' for n in c.notes)}</section>"
    )
    cards = "".join(_card(o, i) for i, o in enumerate(c.outputs))
    pairs = "".join(_pair(c, p) for p in c.pairs)
    page = PAGE.format(
        title=esc(title),
        css=CSS + charts.CSS,
        summary=head + cards,
        accuracy=_plot(c) if c.gold_column else "",
        charts=pairs,
        tables="",
        data=embedded_json(json.loads(exact_json(comparison_json(c)))),
    )
    durable.write_bytes(target, page.encode("utf-8"))


def _card(o: OutputFigures, index: int) -> str:
    accuracy = (
        f"{o.accuracy:.1%} (95% interval {o.accuracy_low:.1%} \u2013 {o.accuracy_high:.1%})"
        if o.accuracy is not None and o.accuracy_low is not None and o.accuracy_high is not None
        else "no gold labels"
    )
    facts = [
        ("models", ", ".join(o.models) or "-"),
        ("rows", f"{o.rows:,} ({o.invalid:,} invalid)"),
        ("accuracy", accuracy),
        ("cost", money(o.cost_usd) if o.cost_usd is not None else "unpriced"),
        (
            "per 1,000 rows",
            money(o.cost_per_1000_rows_usd) if o.cost_per_1000_rows_usd is not None else "-",
        ),
        ("latency p50", f"{o.latency_p50_ms:,.0f} ms" if o.latency_p50_ms is not None else "-"),
    ]
    rows = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts)
    return (
        f'<section class="card"><div class="eyebrow">output {index + 1}</div>'
        f'<h2>{esc(o.output)}</h2><dl class="facts">{rows}</dl></section>'
    )


def _pair(c: Comparison, p: PairFigures) -> str:
    a, b = c.outputs[p.a].output, c.outputs[p.b].output
    labels = sorted({x for x, _ in p.flips} | {y for _, y in p.flips})  # the diagonal: same
    counts = [[p.flips.get((x, y), 0) for y in labels] for x in labels]
    kappa = "undefined" if p.kappa is None else f"{p.kappa:.2f}"
    agreement = "-" if p.agreement is None else f"{p.agreement:.1%}"
    titles = (f"label of {short(a, 40)}", f"label of {short(b, 40)}")
    return (
        f'<section class="card wide"><h2>{esc(a)} vs {esc(b)}</h2>'
        f"<p>{esc(p.verdict or 'no gold labels: agreement only')}</p>"
        f"<p>agreement {esc(agreement)}, Cohen's kappa {esc(kappa)}</p>"
        f"<figure><figcaption>Labels of the same rows: rows are {esc(a)}'s, columns "
        f"{esc(b)}'s</figcaption>"
        + heatmap(labels, labels, counts, titles, f"label flips, {a} against {b}")
        + "</figure></section>"
    )


def _plot(c: Comparison) -> str:
    """Accuracy (with its interval) against the cost of 1,000 rows, one point an output."""
    points = [
        (float(o.cost_per_1000_rows_usd), o)
        for o in c.outputs
        if o.cost_per_1000_rows_usd is not None and o.accuracy is not None
    ]
    if not points:
        return ""
    frame = Frame(HALF * 2, 380, left=70, right=40, top=24, bottom=60)
    costs = [x for x, _ in points]
    x = Axis.over(0.0, max(costs) * 1.1 or 1.0, "cost per 1,000 rows (USD)")
    lows = [o.accuracy_low or 0.0 for _, o in points]
    y = Axis.over(max(0.0, min(lows) - 0.05), 1.0, "accuracy")
    marks = []
    for cost, o in points:
        px = x.at(cost, frame.x0, frame.x1)
        top, bottom = (
            y.at(v or 0.0, frame.y0, frame.y1) for v in (o.accuracy_high, o.accuracy_low)
        )
        py = y.at(o.accuracy or 0.0, frame.y0, frame.y1)
        marks.append(
            f'<line class="interval" x1="{px:.1f}" x2="{px:.1f}" y1="{top:.1f}" '
            f'y2="{bottom:.1f}" stroke="{BLUE}" stroke-width="2"/>'
            f'<circle class="point" cx="{px:.1f}" cy="{py:.1f}" r="6" fill="{BLUE}"/>'
            f'<text class="value" x="{px + 10:.1f}" y="{py - 8:.1f}">'
            f"{esc(short(o.name, 28))}</text>"
        )
    body = x_axis(frame, x) + y_axis(frame, y) + "".join(marks)
    chart = svg(frame, body, "accuracy against cost per 1,000 rows, with 95% intervals")
    return (
        '<section class="card wide"><h2>Accuracy against cost</h2><figure><figcaption>'
        "Each output: its accuracy (the line: 95% interval) and what 1,000 rows cost"
        f"</figcaption>{chart}</figure></section>"
    )
