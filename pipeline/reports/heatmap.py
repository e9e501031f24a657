"""The confusion matrix of the HTML report's accuracy section as an SVG heatmap: a cell a
(gold, predicted) pair with its count, shaded by its share of the row. Drawn with the
pieces of `charts` (its frame, escaping and stylesheet); every text from the data is
escaped, in text nodes and in attributes alike."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.reports.charts import INK, Frame, esc, short, svg

CORRECT = ((238, 243, 251), (22, 72, 138))  # shades: light to dark, by the row's share
CONFUSED = ((253, 240, 229), (168, 67, 10))
MIXED = ((241, 242, 244), (82, 96, 109))  # "other" labelled "other": right and confused
ZERO = "#f6f7f9"


def heatmap(
    rows: Sequence[str],
    columns: Sequence[str],
    counts: Sequence[Sequence[int]],
    titles: tuple[str, str],
    label: str,
    mixed: int | None = None,
) -> str:
    """A confusion matrix: a cell a (row, column) with its count; shaded by its share of
    the row, blue on the diagonal (right), orange off it (confused). Totals at the ends.
    `mixed`: the row whose diagonal cell is several classes folded into one (grey)."""
    cell = min(96.0, max(40.0, 560 / max(len(columns), 1)))
    names = [titles[0], *(short(r, 20) for r in rows)]
    left = min(200.0, max(90.0, 7.5 * max(map(len, names)) + 24))
    width, height = cell * len(columns), cell * len(rows)
    frame = Frame(left + width + 70, 64 + height + 36, left=left, right=70, top=64, bottom=36)
    parts = [
        f'<text class="axis-title" x="{left + width / 2:.1f}" y="20" text-anchor="middle">'
        f"{esc(titles[1])}</text>",
        f'<text class="axis-title" x="{left - 12}" y="{frame.y1 - 12}" text-anchor="end">'
        f"{esc(titles[0])}</text>",
        f'<text x="{left + width + 12:.1f}" y="{frame.y1 - 12}">total</text>',
        f'<text x="{left - 12}" y="{frame.y0 + 22:.1f}" text-anchor="end">total</text>',
    ]
    for j, name in enumerate(columns):
        x = left + (j + 0.5) * cell
        parts.append(
            f'<text class="category" x="{x:.1f}" y="{frame.y1 - 12}" text-anchor="middle">'
            f"<title>{esc(name)}</title>{esc(short(name, int(cell // 8)))}</text>"
            f'<text class="total" x="{x:.1f}" y="{frame.y0 + 22:.1f}" text-anchor="middle">'
            f"{sum(row[j] for row in counts):,}</text>"
        )
    for i, name in enumerate(rows):
        parts.append(_heat_row(frame, cell, (i, i == mixed), name, columns, counts[i]))
    return svg(frame, "".join(parts), label, "heatmap")


def _heat_row(
    frame: Frame,
    cell: float,
    row: tuple[int, bool],
    name: str,
    columns: Sequence[str],
    counts: Sequence[int],
) -> str:
    """Row `row[0]` of the matrix; `row[1]`: its diagonal cell is mixed (folded classes)."""
    (i, mixed), y, total = row, frame.y1 + row[0] * cell, sum(counts)
    parts = [
        f'<text class="category" x="{frame.x0 - 12}" y="{y + cell / 2 + 5:.1f}" '
        f'text-anchor="end"><title>{esc(name)}</title>{esc(short(name, 20))}</text>',
        f'<text class="total" x="{frame.x0 + cell * len(columns) + 12:.1f}" '
        f'y="{y + cell / 2 + 5:.1f}">{total:,}</text>',
    ]
    for j, (column, count) in enumerate(zip(columns, counts, strict=True)):
        share = count / total if total else 0.0
        x, shades = frame.x0 + j * cell, (MIXED if mixed else CORRECT) if j == i else CONFUSED
        fill = _blend(*shades, 0.15 + 0.85 * share) if count else ZERO
        ink = "#ffffff" if count and share >= 0.45 else INK
        weight = ' font-weight="700"' if j == i else ""
        middle = y + cell / 2 + (0 if cell >= 56 else 5)
        parts.append(
            f'<g class="cell" data-gold="{esc(name)}" data-predicted="{esc(column)}">'
            f"<title>{esc(name)} labelled {esc(column)}: {count:,} ({share:.0%} of the row)"
            f'</title><rect x="{x + 1:.1f}" y="{y + 1:.1f}" width="{cell - 2:.1f}" '
            f'height="{cell - 2:.1f}" rx="3" fill="{fill}"/>'
            f'<text class="count" x="{x + cell / 2:.1f}" y="{middle:.1f}" text-anchor="middle" '
            f'fill="{ink}" style="fill: {ink}"{weight}>{count:,}</text>'
            + (
                f'<text class="share" x="{x + cell / 2:.1f}" y="{middle + 17:.1f}" '
                f'text-anchor="middle" style="fill: {ink}">{share:.0%}</text>'
                if cell >= 56 and count
                else ""
            )
            + "</g>"
        )
    return "".join(parts)


def _blend(low: tuple[int, int, int], high: tuple[int, int, int], t: float) -> str:
    r, g, b = (round(a + (z - a) * t) for a, z in zip(low, high, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"
