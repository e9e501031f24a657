"""Small checks for the job file's values: each returns the value or raises Invalid with
what was expected (job.py adds the file, table and key)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pipeline.errors import Invalid as Invalid

Check = Callable[[Any], Any]


def type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def string(choices: tuple[str, ...] = ()) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(f"must be a string (got {type_name(value)})")
        if choices and value not in choices:
            raise Invalid(f"must be one of {', '.join(map(repr, choices))} (got {value!r})")
        return value

    return check


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    above: float | None = None,
) -> Check:
    """A number within bounds; the message names the bound broken and, when there are
    two, the whole accepted range (so a user fixes it in one go)."""
    accepted = _range_text(low, high, above)

    def check(value: Any) -> int | float:
        wanted = "an integer" if integer else "a number"
        ok_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type):
            raise Invalid(f"must be {wanted} (got {type_name(value)}{accepted})")
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes every bound
            raise Invalid(f"must be a finite number (got {value}{accepted})")
        broken = (
            f">= {_text(low)}" if low is not None and value < low
            else f"<= {_text(high)}" if high is not None and value > high
            else f"> {_text(above)}" if above is not None and value <= above
            else None
        )  # fmt: skip
        if broken is not None:
            raise Invalid(f"must be {broken} (got {_text(value)}{accepted})")
        return value

    return check


def _range_text(low: float | None, high: float | None, above: float | None) -> str:
    """`; accepted: 1 to 10000` when both ends are bounded, else nothing."""
    bottom = (
        _text(low) if low is not None else (f"above {_text(above)}" if above is not None else None)
    )
    if bottom is None or high is None:
        return ""
    return f"; accepted: {bottom} to {_text(high)}"


def _text(value: float) -> str:
    """A bound or value as a user wrote it: 10000 not 1e+04, 0.01 and 1e-300 as they are."""
    if isinstance(value, int):  # TOML caps integers at 64 bits, a job built in code does not
        digits = str(value)
        return digits if len(digits) <= 24 else f"an integer of {len(digits)} digits"
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:g}"


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false (got {type_name(value)})")
    return value


def string_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid("must be an array of strings")
    return tuple(value)


def mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"must be a table (got {type_name(value)})")
    return value


def mapping_list(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise Invalid("must be an array of tables")
    return value
