"""Prices (USD per million tokens) from a versioned data file, and the cost columns.

Costs are computed in Decimal from the price strings, so `tokens x price` is exact before
the one rounding to float that Parquet stores. A model missing from the table gives null
costs and one warning, never a silent zero. An output directory keeps the job's [pricing]
beside its rows (`record_prices`), so its reports price savings by the same table.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from pipeline.errors import JobFileError, PipelineError, UsageError
from pipeline.providers.base import Usage
from pipeline.schema import COST_COLUMNS
from pipeline.store import durable
from pipeline.store.layout import PRICES_FILE

MILLION = Decimal(1_000_000)
CACHE_WRITE_5M, CACHE_WRITE_1H, CACHE_READ = Decimal("1.25"), Decimal(2), Decimal("0.1")
BATCH_DISCOUNT = Decimal("0.5")


@dataclass(frozen=True)
class Price:
    """USD per million tokens of each kind."""

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    long_context_above: int | None = None  # total input tokens above which...
    long_context: Price | None = None  # ...every token of the request is priced so
    min_cache_tokens: int | None = None  # the shortest prefix the model caches (not a price)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Price:
        base = Decimal(str(raw["input"]))

        def get(key: str, multiplier: Decimal) -> Decimal:
            return Decimal(str(raw[key])) if key in raw else base * multiplier

        long = raw.get("long_context")
        return cls(
            input=base,
            output=Decimal(str(raw["output"])),
            cache_write_5m=get("cache_write_5m", CACHE_WRITE_5M),
            cache_write_1h=get("cache_write_1h", CACHE_WRITE_1H),
            cache_read=get("cache_read", CACHE_READ),
            long_context_above=int(long["above_input_tokens"]) if long else None,
            long_context=cls.from_mapping(long) if long else None,
            min_cache_tokens=int(raw["min_cache_tokens"]) if "min_cache_tokens" in raw else None,
        )


def split_writes(usage: Usage, write_ttl: str | None) -> Usage:
    """`usage` with the cache writes its 5m / 1h split leaves out (an answer that gives
    only `cache_creation_input_tokens`) counted at the TTL the request asked for: "1h",
    else 5 minutes (the API's default when a breakpoint names none)."""
    rest = (
        usage.cache_creation_input_tokens
        - usage.cache_creation_5m_tokens
        - usage.cache_creation_1h_tokens
    )
    if rest <= 0:
        return usage
    if write_ttl == "1h":
        return replace(usage, cache_creation_1h_tokens=usage.cache_creation_1h_tokens + rest)
    return replace(usage, cache_creation_5m_tokens=usage.cache_creation_5m_tokens + rest)


def costs(price: Price, usage: Usage, write_ttl: str | None = None) -> dict[str, float]:
    """The five cost columns of one answered request; writes without a 5m / 1h split are
    priced at `write_ttl` (`split_writes`)."""
    return dict(zip(COST_COLUMNS, _exact_costs(price, usage, write_ttl), strict=True))


@functools.lru_cache(maxsize=4096)  # a labelling job's answers repeat their token counts
def _exact_costs(price: Price, usage: Usage, write_ttl: str | None) -> tuple[float, ...]:
    usage = split_writes(usage, write_ttl)
    total_input = (
        usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    )
    if (
        price.long_context
        and price.long_context_above is not None
        and total_input > price.long_context_above
    ):
        price = price.long_context
    factor = BATCH_DISCOUNT if usage.service_tier == "batch" else Decimal(1)
    parts = (
        usage.input_tokens * price.input,
        usage.output_tokens * price.output,
        usage.cache_creation_5m_tokens * price.cache_write_5m
        + usage.cache_creation_1h_tokens * price.cache_write_1h,
        usage.cache_read_input_tokens * price.cache_read,
    )
    exact = [part * factor / MILLION for part in parts]
    return (*map(float, exact), float(sum(exact)))


class PriceTable:
    def __init__(
        self,
        version: str,
        prices: Mapping[str, Price],
        aliases: Mapping[str, str],
        *,
        warn_to: TextIO | None = None,
    ) -> None:
        self.version = version
        self.prices = dict(prices)
        self.aliases = dict(aliases)
        self.overrides: dict[str, Any] = {}  # the job's [pricing] (with_overrides), kept
        self._warned: set[str] = set()
        self._warn_to = warn_to

    def lookup(self, model: str, *fallbacks: str | None) -> Price | None:
        """The price of `model` (an id or an alias), else of the first fallback that has one.

        None warns once per model: its cost columns will be null, never a silent zero.
        """
        for candidate in (model, *fallbacks):
            if candidate:
                price = self.prices.get(candidate) or self.prices.get(
                    self.aliases.get(candidate, "")
                )
                if price is not None:
                    return price
        if model not in self._warned:
            self._warned.add(model)
            print(
                f"warning: no price for model {model!r}{self.did_you_mean(model)}: its cost "
                "columns are null (add it under [pricing] in the job file)",
                file=self._warn_to or sys.stderr,
            )
        return None

    def knows(self, model: str) -> bool:
        """Whether `model` (an id or an alias) has a price, without lookup's warning."""
        return model in self.prices or self.aliases.get(model, "") in self.prices

    def refuse_unpriced_budget(self, models: Iterable[str]) -> None:
        """A budget needs every model's price: the run would stop at its first request
        (after a warning naming the model, then again in the stop's reason); refused here
        in one line, with the model the name was likely meant to be."""
        for model in models:
            if not self.knows(model):
                raise UsageError(
                    f"cannot keep max_cost_usd: no price for model {model!r}"
                    f"{self.did_you_mean(model)} (fix the name, or add it under [pricing] in "
                    "the job file; `pipeline models` lists the prices known)"
                )

    def did_you_mean(self, model: str) -> str:
        """` (did you mean 'X'?)` when a priced id or alias is close to `model` (a date
        typed one digit short, a dot for a dash), else nothing."""
        close = difflib.get_close_matches(model, [*self.prices, *self.aliases], n=1, cutoff=0.8)
        return f" (did you mean {close[0]!r}?)" if close else ""

    def with_overrides(self, overrides: Mapping[str, Mapping[str, float]]) -> PriceTable:
        """This table with the job's [pricing] entries on top; the version says so."""
        if not overrides:
            return self
        prices = dict(self.prices)
        for model, raw in overrides.items():
            known = self.prices.get(model) or self.prices.get(self.aliases.get(model, ""))
            if known is not None and "min_cache_tokens" not in raw and known.min_cache_tokens:
                raw = {**raw, "min_cache_tokens": known.min_cache_tokens}  # kept: not a price
            try:
                price = Price.from_mapping(raw)
            except (KeyError, ValueError, ArithmeticError) as e:
                raise JobFileError(f"[pricing] {model}: invalid price ({e})") from None
            prices[model] = price
            if model in self.aliases:  # the API answers with the id the alias points to
                prices[self.aliases[model]] = price
        digest = hashlib.sha256(repr(sorted(overrides.items())).encode()).hexdigest()[:8]
        table = PriceTable(
            f"{self.version}+job-{digest}", prices, self.aliases, warn_to=self._warn_to
        )
        table.overrides = {model: dict(raw) for model, raw in overrides.items()}
        return table


def load_price_table(text: str | None = None) -> PriceTable:
    """The built-in table (pipeline/data/prices.toml), or one given as TOML text."""
    if text is None:
        text = resources.files("pipeline").joinpath("data/prices.toml").read_text("utf-8")
    raw = tomllib.loads(text)
    minimum = raw.get("cache_minimum", {})
    prices = {
        model: Price.from_mapping(
            {"min_cache_tokens": minimum[model], **entry} if model in minimum else entry
        )
        for model, entry in raw["models"].items()
    }
    return PriceTable(str(raw["version"]), prices, raw.get("aliases", {}))


def record_prices(output_dir: Path, table: PriceTable) -> None:
    """The job's [pricing] beside its results: a report has only the directory, and
    without these prices it could not tell what caching and batches saved."""
    if not table.overrides:
        return
    content = {"version": table.version, "pricing": table.overrides}
    durable.write_bytes(output_dir / PRICES_FILE, json.dumps(content, indent=2).encode())


def output_prices(output_dir: Path) -> PriceTable:
    """The table an output's rows were priced by: the built-in one, with the job's
    [pricing] as `record_prices` kept it (none, or unreadable: the built-in one alone)."""
    table = load_price_table()
    directory = output_dir.parent if output_dir.is_file() else output_dir  # a results file
    try:
        recorded = json.loads((directory / PRICES_FILE).read_text(encoding="utf-8"))
        return table.with_overrides(recorded["pricing"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, PipelineError):
        return table
