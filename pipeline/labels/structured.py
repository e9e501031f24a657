"""Typed label columns from a JSON object in the answer (`kind = "json"`) or from a forced
tool call's input (`kind = "tool"`). Each declared field becomes one typed column.

A type may end in `?` ("integer?"): the field is optional, and a missing or null value is a
null cell with the label still `ok`. A required field that is missing or null, or any field
of the wrong type, makes the row's label `invalid` with the reason naming each such field,
while the other fields keep their values: one bad field of ten does not throw away nine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

FIELD_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(), "integer": pa.int64(), "number": pa.float64(),
    "boolean": pa.bool_(), "json": pa.string(),  # json: any value, stored as JSON text
}  # fmt: skip
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def object_in_text(text: str) -> dict[str, Any]:
    """The JSON object an answer holds: the whole text, a ```json fence, or the outermost
    {...} in it. ValueError says what was wrong."""
    candidates = [text.strip(), *(m.strip() for m in _FENCE.findall(text))]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            value = orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("no JSON object in the answer" if start < 0 else "the JSON does not parse")


OPTIONAL = "?"  # a type's suffix: the field may be missing or null


def field_type(declared: str) -> tuple[str, bool]:
    """(base type, optional) of a declared type: "integer?" is ("integer", True)."""
    return declared.removesuffix(OPTIONAL), declared.endswith(OPTIONAL)


def column_type(declared: str) -> pa.DataType:
    """The column of a declared type: "integer?" is an int64 column, like "integer"."""
    return FIELD_TYPES[field_type(declared)[0]]


@dataclass(frozen=True, slots=True)
class FieldValues:
    values: dict[str, Any]  # every declared field: its typed value, or None
    errors: tuple[str, ...]  # one reason for each field that makes the label invalid


def field_values(obj: Mapping[str, Any], fields: Mapping[str, str]) -> FieldValues:
    """Each declared field's typed value, and a reason for each bad one (its cell null)."""
    values: dict[str, Any] = {}
    errors: list[str] = []
    for name, declared in fields.items():
        kind, optional = field_type(declared)
        values[name] = None
        if obj.get(name) is None:
            if not optional:
                errors.append(f"field {name!r} is missing")
            continue
        try:
            values[name] = _typed(name, obj[name], kind)
        except ValueError as e:  # a wrong type is wrong even in an optional field
            errors.append(str(e))
    return FieldValues(values, tuple(errors))


def typed_values(obj: Mapping[str, Any], fields: Mapping[str, str]) -> dict[str, Any]:
    """One value per declared field, checked against its type; ValueError names the bad
    fields (all or nothing, where `field_values` keeps the good ones)."""
    found = field_values(obj, fields)
    if found.errors:
        raise ValueError("; ".join(found.errors))
    return found.values


def _typed(name: str, value: Any, kind: str) -> Any:
    if kind == "json":
        return orjson.dumps(value).decode()
    if kind == "boolean" and isinstance(value, bool):
        return value
    if isinstance(value, bool):
        raise ValueError(f"field {name!r} should be {kind}, not a boolean")
    if kind == "integer" and isinstance(value, int | float):
        return _int64(name, value)
    if kind == "number" and isinstance(value, int | float):
        return float(value)
    if kind == "string" and isinstance(value, str):
        return value
    raise ValueError(f"field {name!r} should be {kind}, got {orjson.dumps(value).decode()[:40]}")


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXACT_FLOAT_INT = 2**53  # beyond it a JSON number parsed as a double may not be the one written


def _int64(name: str, value: int | float) -> int:
    """An integer field's value as the int64 column holds it; ValueError when it is not
    exactly an integer that fits 64 bits (1e20, 12000000000000000000, 1.5)."""
    shown = orjson.dumps(value).decode()[:40]
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"field {name!r} should be integer, got {shown}")
        if abs(value) >= EXACT_FLOAT_INT:
            raise ValueError(f"field {name!r} = {shown} is beyond the exact integer range")
        return int(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"field {name!r} = {shown} does not fit a 64-bit integer")
    return value


def tool_input(content: list[Any], tool: str) -> dict[str, Any]:
    """The input of the answer's call of `tool`; ValueError when it did not call it."""
    for block in content:
        if (
            isinstance(block, dict)
            and block.get("type") == "tool_use"
            and block.get("name") == tool
        ):
            value = block.get("input")
            if isinstance(value, dict):
                return value
            raise ValueError(f"tool {tool!r} was called without an input object")
    raise ValueError(f"the answer did not call tool {tool!r}")
