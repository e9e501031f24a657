"""Tables as the reports print them: cells with thousands separators, money to six
decimals or more, shares as percentages where people read them (98.6%), aligned text
columns, markdown. Shared by report, accuracy and the HTML page. Exact
(Decimal) money prints its exact digits in every format: a total is the exact sum of its
rows wherever a person or a machine reads it (csv through `exact_text`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection
from decimal import Context, Decimal

import polars as pl

from pipeline.exact import decimal_places

MONEY_PLACES = 6  # money shows at least six decimals, so columns line up; more when exact


def exact(value: Decimal) -> str:
    """A Decimal's exact digits, without trailing zeros or an exponent: -0.0011035, 2."""
    return format(value.normalize(), "f")


def three_figures(value: Decimal) -> Decimal:
    """A quotient (a mean, a cost per 1,000 rows) as a person reads it: 3 significant
    figures (json and csv keep every digit)."""
    return Context(prec=3).plus(value)


def exact_text(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with each Decimal column as the text of its exact digits (for csv)."""
    return frame.with_columns(
        pl.Series(name, [None if v is None else exact(v) for v in frame[name]], pl.String)
        for name, dtype in frame.schema.items()
        if isinstance(dtype, pl.Decimal)
    )


def cell_text(value: object, percent: bool = False) -> str:
    """A cell as the reports show it: thousands separators; money (Decimal) with its exact
    digits, at least six decimals (0.024434, 0.0000425), never rounded; a share (a float
    from 0 to 1) as a percentage to one decimal when `percent` (0.985847: 98.6%)."""
    if value is None:
        return ""
    if percent and isinstance(value, float):
        return f"{value:.1%}"
    if isinstance(value, Decimal):
        return f"{value:,.{max(MONEY_PLACES, decimal_places(value))}f}"
    if isinstance(value, float):
        return f"{value:,.6f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def text_table(
    frame: pl.DataFrame,
    headers: dict[str, str] | None = None,
    percent_columns: Collection[str] = (),
) -> str:
    """Plain aligned columns: text left, numbers right, a rule under the header; the
    `percent_columns` (shares) as percentages."""
    headers = headers or {c: c for c in frame.columns}
    columns = list(headers)
    percent = [c in percent_columns for c in columns]
    cells = [
        [cell_text(v, p) for v, p in zip(row, percent, strict=True)]
        for row in frame.select(columns).iter_rows()
    ]
    numeric = [frame.schema[c].is_numeric() for c in columns]
    widths = [max([len(headers[c]), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line([headers[c] for c in columns]), "  ".join("-" * w for w in widths)]
    return "\n".join(out + [line(r) for r in cells]) + "\n"


def markdown(frame: pl.DataFrame) -> str:
    def cell(value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.6f}"
        if isinstance(value, Decimal):
            return exact(value)
        return str(value).replace("|", "\\|")

    lines = [
        "| " + " | ".join(frame.columns) + " |",
        "|" + "|".join("---" for _ in frame.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines) + "\n"


def exact_json(data: object) -> str:
    """`data` as JSON indented by 2, each Decimal written as a number of its exact digits
    (never through a float), anything else JSON does not know as its text: the one writer
    of the reports' json (report, compare)."""
    token = f"@exact-{uuid.uuid4().hex}-"
    digits: list[str] = []

    def decimal(value: object) -> str:
        if not isinstance(value, Decimal):
            return str(value)
        digits.append(exact(value))
        return f"{token}{len(digits) - 1}"

    text = json.dumps(data, indent=2, default=decimal)
    for i, value in enumerate(digits):
        text = text.replace(f'"{token}{i}"', value, 1)
    return text + "\n"
