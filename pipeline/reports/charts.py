"""SVG charts for the HTML report, drawn as text: axes with "nice" ticks (1, 2 or 5 x 10^k),
horizontal bars, histograms with their counts, and a line with a dashed projection; the
pieces they share (`Frame`, `svg`, `esc`, `short`, the colours and the stylesheet, which
also styles `heatmap`'s confusion matrix). No script, no external file. Every text from
the data is escaped here (`esc`), in text nodes and in attributes alike."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import polars as pl

HALF, FULL = 560, 1120  # chart widths (viewBox units): half the page's width, all of it
INK, MUTED, GRID, AXIS = "#1f2933", "#52606d", "#e4e7eb", "#7b8794"
BLUE, ORANGE, TEAL = "#2f6db5", "#c05d12", "#137b7b"

CSS = f"""
svg.chart, svg.heatmap {{ width: 100%; height: auto; display: block; }}
svg text {{ font-size: 12px; fill: {MUTED}; }}
svg .grid {{ stroke: {GRID}; }} svg .axis {{ stroke: {AXIS}; }}
svg .axis-title, svg .heading {{ fill: {INK}; font-weight: 600; }}
svg .value, svg .category {{ fill: {INK}; }}
svg .count {{ font-size: 10.5px; fill: {INK}; }}
svg .note {{ fill: {INK}; font-weight: 600; }}
svg .cell text {{ font-size: 14px; }} svg .cell text.share {{ font-size: 11px; }}
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def short(text: str, most: int, middle: bool = False) -> str:
    """`text` in at most `most` characters: cut at the end, or in the `middle`."""
    if len(text) <= most:
        return text
    if not middle:
        return text[: max(most - 1, 1)] + "\u2026"
    head = max((most - 1) // 2, 1)
    return text[:head] + "\u2026" + text[len(text) - max(most - 1 - head, 1) :]


def nice_step(raw: float, integer: bool = False) -> Decimal:
    """The least 1, 2 or 5 x 10^k not below `raw` (at least 1 when `integer`)."""
    if not math.isfinite(raw) or raw <= 0:
        return Decimal(1)
    exponent = math.floor(math.log10(raw))
    step = next(
        s
        for s in (Decimal(m).scaleb(exponent) for m in (1, 2, 5, 10))
        if float(s) >= raw * (1 - 1e-9)
    )
    return max(step, Decimal(1)) if integer else step


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """Ticks at multiples of a nice step covering [low, high] in at most ~`count` steps."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"nice_ticks({low}, {high}): not finite")
    low, high = min(low, high), max(low, high)
    if high == low:
        high = low + (abs(low) or 1)
    step = nice_step((high - low) / count, integer)
    first = math.floor(low / float(step) + 1e-9)
    last = math.ceil(high / float(step) - 1e-9)
    return [float(step * k) for k in range(first, last + 1)]


def tick_texts(ticks: Sequence[float]) -> list[str]:
    """Tick labels with the step's decimals; k / M past 10,000 (12k, 1.5M)."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    top = max(abs(t) for t in ticks)
    scale, suffix = (1e6, "M") if top >= 1e6 else (1e3, "k") if top >= 1e4 else (1.0, "")
    decimals = max(0, -math.floor(math.log10(step / scale) + 1e-9))
    return ["0" if t == 0 else f"{t / scale:,.{decimals}f}{suffix}" for t in ticks]


@dataclass(frozen=True)
class Axis:
    """Ticks and a title; the axis spans its first to its last tick, or `domain`."""

    ticks: tuple[float, ...]
    title: str
    domain: tuple[float, float] | None = None

    @classmethod
    def over(cls, low: float, high: float, title: str, integer: bool = False) -> Axis:
        return cls(tuple(nice_ticks(low, high, integer=integer)), title)

    def at(self, value: float, start: float, end: float) -> float:
        low, high = self.domain or (self.ticks[0], self.ticks[-1])
        return start + (end - start) * (value - low) / (high - low)


@dataclass(frozen=True)
class Frame:
    """A chart's size and the plot area inside its margins (SVG units, y grows down)."""

    width: float
    height: float
    left: float = 70
    right: float = 28
    top: float = 20
    bottom: float = 54

    @property
    def x0(self) -> float:
        return self.left

    @property
    def x1(self) -> float:
        return self.width - self.right

    @property
    def y0(self) -> float:
        return self.height - self.bottom  # the bottom of the plot area

    @property
    def y1(self) -> float:
        return self.top


def svg(frame: Frame, body: str, label: str, kind: str = "chart") -> str:
    return (
        f'<svg class="{kind}" viewBox="0 0 {frame.width:g} {frame.height:g}" role="img" '
        f'aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )


def empty(label: str, width: float = HALF, height: float = 120) -> str:
    body = f'<text x="{width / 2:g}" y="{height / 2:g}" text-anchor="middle">no data</text>'
    return svg(Frame(width, height), body, label)


def x_axis(frame: Frame, axis: Axis) -> str:
    parts = [
        f'<line class="axis" x1="{frame.x0}" y1="{frame.y0}" x2="{frame.x1}" y2="{frame.y0}"/>'
    ]
    for value, text in zip(axis.ticks, tick_texts(axis.ticks), strict=True):
        x = axis.at(value, frame.x0, frame.x1)
        parts.append(
            f'<g class="tick x"><line class="grid" x1="{x:.1f}" y1="{frame.y1}" x2="{x:.1f}" '
            f'y2="{frame.y0}"/><line class="axis" x1="{x:.1f}" y1="{frame.y0}" x2="{x:.1f}" '
            f'y2="{frame.y0 + 5}"/><text x="{x:.1f}" y="{frame.y0 + 19}" '
            f'text-anchor="middle">{text}</text></g>'
        )
    parts.append(
        f'<text class="axis-title" x="{(frame.x0 + frame.x1) / 2:.1f}" y="{frame.y0 + 42}" '
        f'text-anchor="middle">{esc(axis.title)}</text>'
    )
    return "".join(parts)


def y_axis(frame: Frame, axis: Axis) -> str:
    parts = [
        f'<line class="axis" x1="{frame.x0}" y1="{frame.y1}" x2="{frame.x0}" y2="{frame.y0}"/>'
    ]
    for value, text in zip(axis.ticks, tick_texts(axis.ticks), strict=True):
        y = axis.at(value, frame.y0, frame.y1)
        parts.append(
            f'<g class="tick y"><line class="grid" x1="{frame.x0}" y1="{y:.1f}" x2="{frame.x1}" '
            f'y2="{y:.1f}"/><line class="axis" x1="{frame.x0 - 5}" y1="{y:.1f}" '
            f'x2="{frame.x0}" y2="{y:.1f}"/><text x="{frame.x0 - 8}" y="{y + 4:.1f}" '
            f'text-anchor="end">{text}</text></g>'
        )
    middle = (frame.y0 + frame.y1) / 2
    parts.append(
        f'<text class="axis-title" x="{frame.x0 - 54}" y="{middle:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 {frame.x0 - 54} {middle:.1f})">{esc(axis.title)}</text>'
    )
    return "".join(parts)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    texts: Sequence[str],
    axis_title: str,
    label: str,
    color: str = BLUE,
) -> str:
    """Horizontal bars, one a label, each with its value's text at its end."""
    if not labels:
        return empty(label)
    band = min(40.0, max(24.0, 200 / len(labels)))
    left = min(170, max(48, 7.5 * max(len(short(n, 20, True)) for n in labels) + 20))
    frame = Frame(HALF, 20 + band * len(labels) + 56, left=left, right=96, top=20, bottom=56)
    axis = Axis.over(0, max(max(values), 0), axis_title)
    parts = [x_axis(frame, axis)]
    for i, (name, value, text) in enumerate(zip(labels, values, texts, strict=True)):
        y, end = frame.y1 + i * band, axis.at(max(value, 0), frame.x0, frame.x1)
        parts.append(
            f'<text class="category" x="{frame.x0 - 10}" y="{y + band / 2 + 4:.1f}" '
            f'text-anchor="end"><title>{esc(name)}</title>{esc(short(name, 20, True))}</text>'
            f'<rect class="bar" x="{frame.x0}" y="{y + band * 0.18:.1f}" '
            f'width="{end - frame.x0:.1f}" height="{band * 0.64:.1f}" fill="{color}" rx="2">'
            f"<title>{esc(name)}: {esc(text)}</title></rect>"
            f'<text class="value" x="{end + 6:.1f}" y="{y + band / 2 + 4:.1f}">{esc(text)}</text>'
        )
    return svg(frame, "".join(parts), label)


@dataclass(frozen=True)
class Bins:
    """Integer values counted in bins of `width`: bin i holds start + i*width .. + width-1."""

    start: int
    width: int
    counts: tuple[int, ...]


def bins(values: pl.Series, most: int = 20) -> Bins | None:
    values = values.drop_nulls().cast(pl.Int64)
    if values.is_empty():
        return None
    low, high = int(values.min()), int(values.max())  # type: ignore[arg-type]
    width = int(nice_step((high - low + 1) / most, integer=True))
    start = low // width * width
    found = ((values - start) // width).value_counts(name="n")
    counts = dict(zip(found[values.name].to_list(), found["n"].to_list(), strict=True))
    return Bins(start, width, tuple(counts.get(i, 0) for i in range((high - start) // width + 1)))


def histogram(values: pl.Series, axis_title: str, label: str, color: str = BLUE) -> str:
    """Bars of the counts of integer values, each count written over its bar."""
    found = bins(values)
    if found is None:
        return empty(label)
    frame = Frame(HALF, 280, left=70, right=20, top=24, bottom=54)
    x, w = _bin_axis(found, axis_title), found.width
    y = Axis.over(0, max(found.counts), "rows", integer=True)
    parts = [x_axis(frame, x), y_axis(frame, y)]
    for i, count in enumerate(found.counts):
        left = x.at(found.start + i * w - 0.5, frame.x0, frame.x1)
        right = x.at(found.start + (i + 1) * w - 0.5, frame.x0, frame.x1)
        top, span = y.at(count, frame.y0, frame.y1), f"{found.start + i * w:,}"
        span += f"\u2013{found.start + (i + 1) * w - 1:,}" if w > 1 else ""
        parts.append(
            f'<rect class="bar" x="{left + 0.5:.1f}" y="{top:.1f}" width="{right - left - 1:.1f}" '
            f'height="{frame.y0 - top:.1f}" fill="{color}"><title>{span}: {count:,} rows</title>'
            "</rect>"
        )
        if count and right - left >= 12:
            parts.append(
                f'<text class="count" x="{(left + right) / 2:.1f}" y="{top - 4:.1f}" '
                f'text-anchor="middle">{_count(count)}</text>'
            )
    return svg(frame, "".join(parts), label)


def _bin_axis(found: Bins, title: str) -> Axis:
    """Bin i's bar spans start + i*width - 0.5 .. + width (integers centred); a few bins
    are padded to a sensible width; ticks never below 0 when no value is."""
    n, w = len(found.counts), found.width
    pad = max(0, 8 - n)
    low = found.start - 0.5 - pad // 2 * w
    if found.start >= 0:
        low = max(low, -0.5)
    high = found.start - 0.5 + (n + pad - pad // 2) * w
    ticks = nice_ticks(max(low, 0) if found.start >= 0 else low, high, integer=True)
    return Axis(tuple(ticks), title, (min(ticks[0], low), max(ticks[-1], high)))


def _count(n: int) -> str:
    return f"{n:,}" if n < 10_000 else f"{n / 1000:,.0f}k"


@dataclass(frozen=True)
class Mark:
    """A point drawn with its text: the end of the line, or where a projection reaches."""

    x: float
    y: float
    text: str


def line_chart(
    xs: Sequence[float],
    ys: Sequence[float],
    axes: tuple[str, str],
    end: str,
    label: str,
    projection: Mark | None = None,
) -> str:
    """A rising line (thinned to ~600 points) over a light area, its end marked with `end`,
    and a dashed extension to `projection` when given."""
    if len(xs) < 2:
        return empty(label, FULL)
    frame = Frame(FULL, 320, left=86, right=36, top=30, bottom=54)
    far = projection or Mark(xs[-1], ys[-1], "")
    x = Axis.over(0, max(xs[-1], far.x), axes[0])
    y = Axis.over(0, max(ys[-1], far.y), axes[1])
    step = max(1, len(xs) // 600)
    keep = [*range(0, len(xs) - 1, step), len(xs) - 1]
    points = [(x.at(xs[i], frame.x0, frame.x1), y.at(ys[i], frame.y0, frame.y1)) for i in keep]
    path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
    (x0, _), (ex, ey) = points[0], points[-1]
    parts = [
        x_axis(frame, x),
        y_axis(frame, y),
        f'<polygon points="{x0:.1f},{frame.y0} {path} {ex:.1f},{frame.y0}" fill="{BLUE}" '
        'fill-opacity="0.08"/>',
        f'<polyline class="line" points="{path}" fill="none" stroke="{BLUE}" stroke-width="2.2" '
        'stroke-linejoin="round"/>',
        f'<circle cx="{ex:.1f}" cy="{ey:.1f}" r="4" fill="{BLUE}"/>',
    ]
    if projection is None:
        parts.append(_note(ex - 10, ey - 10, end, "end"))
    else:
        far_end = Mark(
            x.at(projection.x, frame.x0, frame.x1),
            y.at(projection.y, frame.y0, frame.y1),
            projection.text,
        )
        parts.append(_projection(Mark(ex, ey, end), far_end))
    return svg(frame, "".join(parts), label)


def _projection(end: Mark, to: Mark) -> str:
    """The dashed extension from the line's end to the projected point (SVG coordinates)."""
    return (
        f'<line class="projection" x1="{end.x:.1f}" y1="{end.y:.1f}" x2="{to.x:.1f}" '
        f'y2="{to.y:.1f}" stroke="{ORANGE}" stroke-width="2" stroke-dasharray="6 5"/>'
        f'<circle cx="{to.x:.1f}" cy="{to.y:.1f}" r="4" fill="#fff" stroke="{ORANGE}" '
        'stroke-width="2"/>'
        + _note(end.x + 10, end.y + 20, end.text, "start")
        + _note(to.x - 10, to.y - 10, to.text, "end")
    )


def _note(x: float, y: float, text: str, anchor: str) -> str:
    return f'<text class="note" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{esc(text)}</text>'
