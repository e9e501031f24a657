"""`pipeline models [MODEL ...]`: the built-in price table, each model's prices (USD per
million tokens; the batch tier at half of each), its shortest cacheable prefix and the
table's version. A name the table does not know is refused with the nearest one."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from pipeline.errors import UsageError
from pipeline.pricing import BATCH_DISCOUNT, Price, PriceTable, load_price_table
from pipeline.reports.tables import exact, exact_json

KINDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
HEADERS = {
    "model": "model",
    "input": "input",
    "output": "output",
    "cache_write_5m": "cache write 5m",
    "cache_write_1h": "cache write 1h",
    "cache_read": "cache read",
    "batch_input": "batch input",
    "batch_output": "batch output",
    "min_cache_tokens": "cache minimum",
}


def models_output(names: Sequence[str], fmt: str, table: PriceTable | None = None) -> str:
    """The table (or the models `names` pick) as text or as one JSON object."""
    table = table or load_price_table()
    chosen = _chosen(table, names)
    entries = [_entry(table, model) for model in chosen]
    if fmt == "json":
        return exact_json({
            "version": table.version,
            "unit": "USD per million tokens",
            "batch_discount": BATCH_DISCOUNT,
            "models": entries,
        })  # fmt: skip
    return _text(table.version, entries)


def _chosen(table: PriceTable, names: Sequence[str]) -> list[str]:
    """The table's model ids, or those `names` name (an alias names its id)."""
    if not names:
        return list(table.prices)
    chosen = []
    for name in names:
        if not table.knows(name):
            raise UsageError(
                f"no price for model {name!r} in the price table {table.version}"
                f"{table.did_you_mean(name)}; `pipeline models` lists every model"
            )
        chosen.append(name if name in table.prices else table.aliases[name])
    return list(dict.fromkeys(chosen))


def _prices(price: Price, factor: Decimal = Decimal(1)) -> dict[str, Decimal]:
    return {kind: getattr(price, kind) * factor for kind in KINDS}


def _entry(table: PriceTable, model: str) -> dict[str, Any]:
    price = table.prices[model]
    long = price.long_context
    return {
        "model": model,
        "aliases": sorted(a for a, target in table.aliases.items() if target == model),
        **_prices(price),
        "batch": _prices(price, BATCH_DISCOUNT),
        "min_cache_tokens": price.min_cache_tokens,
        "long_context": None
        if long is None
        else {"above_input_tokens": price.long_context_above, **_prices(long)},
    }


def _cell(value: object) -> str:
    if isinstance(value, Decimal):
        return exact(value)
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def _text(version: str, entries: list[dict[str, Any]]) -> str:
    """Aligned columns (numbers right), then one line for each alias and long-context rate."""
    rows = [
        {**e, "batch_input": e["batch"]["input"], "batch_output": e["batch"]["output"]}
        for e in entries
    ]
    cells = [[_cell(row[key]) for key in HEADERS] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(HEADERS.values())]

    def line(values: list[str]) -> str:
        first, *rest = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(
            zip(values, widths, strict=True))]  # fmt: skip
        return "  ".join([first, *rest]).rstrip()

    lines = [
        f"price table {version}: USD per million tokens; the batch tier is half of every "
        "price; cache minimum: the shortest prefix (tokens) the model caches",
        "",
        line(list(HEADERS.values())),
        "  ".join("-" * w for w in widths),
        *(line(r) for r in cells),
    ]
    notes = [_notes(e) for e in entries]
    if any(notes):
        lines += ["", *(n for group in notes for n in group)]
    return "\n".join(lines) + "\n"


def _notes(entry: dict[str, Any]) -> list[str]:
    """What the columns leave out: aliases, and a long-context rate."""
    notes = []
    if entry["aliases"]:
        notes.append(f"{entry['model']}: also called {', '.join(entry['aliases'])}")
    long = entry["long_context"]
    if long is not None:
        notes.append(
            f"{entry['model']}: a request above {long['above_input_tokens']:,} input tokens "
            f"is priced input {exact(long['input'])}, output {exact(long['output'])} "
            "(every token of it)"
        )
    return notes
