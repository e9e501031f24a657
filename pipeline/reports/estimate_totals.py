"""What the estimate adds up over the rows to send (`Totals`): rows, input tokens (counted
or estimated), the output's upper bound, the cost range and the models with no price. The
estimate and its cache and batch lines read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pipeline.pricing import MILLION, PriceTable
from pipeline.providers.anthropic import estimate_input_tokens


@dataclass
class Totals:
    rows: int = 0
    input_tokens: int = 0
    output_max: int = 0
    cost_min: Decimal = Decimal(0)
    cost_max: Decimal = Decimal(0)
    unpriced: set[str] = field(default_factory=set)
    rows_by_model: dict[str, int] = field(default_factory=dict)  # each model's rows to send

    def add(
        self, body: dict[str, Any], prices: PriceTable, tokens: int | None = None
    ) -> tuple[int, Decimal]:
        """Count one request (its input tokens: counted by the API, else estimated here);
        its input tokens and their cost."""
        if tokens is None:
            tokens = estimate_input_tokens(body)  # of the Messages body: any format
        most = int(body["max_tokens"])
        self.rows += 1
        self.input_tokens += tokens
        self.output_max += most
        model = str(body["model"])
        self.rows_by_model[model] = self.rows_by_model.get(model, 0) + 1
        price = prices.lookup(model)
        if price is None:
            self.unpriced.add(str(body["model"]))
            return tokens, Decimal(0)
        input_cost = tokens * price.input / MILLION
        self.cost_min += input_cost
        self.cost_max += input_cost + most * price.output / MILLION
        return tokens, input_cost

    def cost_text(self, factor: Decimal = Decimal(1), less: Decimal = Decimal(0)) -> str:
        """`$min .. $max` (less `less`, times `factor`); "unknown" for the rows of models
        missing from the price table, whose cost is not $0: never "$0.0000 .. $0.0000"."""
        unknown = sum(self.rows_by_model.get(model, 0) for model in self.unpriced)
        if unknown and unknown == self.rows:
            return "unknown"
        low, high = (self.cost_min - less) * factor, (self.cost_max - less) * factor
        text = f"${low:,.4f} .. ${high:,.4f}"
        return text + (f" + unknown ({unknown:,} rows of unpriced models)" if unknown else "")
