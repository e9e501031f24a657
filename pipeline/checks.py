"""Small checks for the job file's values: each returns the value or raises Invalid with
what was expected (job.py adds the file, table and key)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], Any]


class Invalid(ValueError):
    """A value failed its check; the message says what was expected.

    `subkey` names the field inside a table value (thinking.budget_tokens).
    """

    def __init__(self, message: str, subkey: str | None = None) -> None:
        super().__init__(message)
        self.subkey = subkey


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
    def check(value: Any) -> int | float:
        wanted = "an integer" if integer else "a number"
        ok_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type):
            raise Invalid(f"must be {wanted} (got {type_name(value)})")
        if not math.isfinite(value):
            raise Invalid(f"must be a finite number (got {value})")
        if low is not None and value < low:
            raise Invalid(f"must be >= {low:g} (got {value:g})")
        if high is not None and value > high:
            raise Invalid(f"must be <= {high:g} (got {value:g})")
        if above is not None and value <= above:
            raise Invalid(f"must be > {above:g} (got {value:g})")
        return value

    return check


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
