"""Prices (USD per million tokens) from a versioned data file, and the cost columns.

Costs are computed in Decimal from the price strings, so `tokens x price` is exact before
the one rounding to float that Parquet stores. A model missing from the table gives null
costs and one warning, never a silent zero.
"""

from __future__ import annotations

import hashlib
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any, TextIO

from pipeline.errors import JobFileError
from pipeline.providers.base import Usage
from pipeline.schema import COST_COLUMNS

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


def costs(price: Price, usage: Usage) -> dict[str, float]:
    """The five cost columns of one answered request."""
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
    return dict(zip(COST_COLUMNS, [*map(float, exact), float(sum(exact))], strict=True))


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
                f"warning: no price for model {model!r}: its cost columns are null "
                "(add it under [pricing] in the job file)",
                file=self._warn_to or sys.stderr,
            )
        return None

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
        return PriceTable(
            f"{self.version}+job-{digest}", prices, self.aliases, warn_to=self._warn_to
        )


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
