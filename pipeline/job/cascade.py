"""The [cascade] table: its keys, and the rules that tie it to [request] and [extract]."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pipeline.errors import JobFileError
from pipeline.job.checks import Check, Invalid, number, string, string_list
from pipeline.job.model import CascadeSettings, ExtractSpec

SIGNALS = ("votes", "stated")
MAX_STAGES = 8  # the thresholds tried grow as (distinct confidences + 1) ** (stages - 1)


def _models(value: Any) -> tuple[str, ...]:
    models = tuple(string_list(value))
    if len(models) < 2:
        raise Invalid(f"must name 2 or more models, cheapest first (got {len(models)})")
    if len(models) > MAX_STAGES:
        raise Invalid(f"must name at most {MAX_STAGES} models (got {len(models)})")
    if len(set(models)) != len(models):
        raise Invalid("must not name a model twice")
    if any(not m.strip() for m in models):
        raise Invalid("must not hold an empty model name")
    return models


CASCADE_KEYS: dict[str, Check] = {
    "models": _models,
    "samples": number(1, 20, integer=True),
    "target": number(above=0, high=1),
    "confidence": number(above=0, high=0.9999),
    "calibration_rows": number(1, 1_000_000, integer=True),
    "signal": string(SIGNALS),
}

Fail = Callable[[str, str], JobFileError]


def cascade_settings(
    table: Mapping[str, Any] | None,
    request: dict[str, Any],
    extract: ExtractSpec,
    overrides: Mapping[str, str],
    fail: Fail,
) -> CascadeSettings | None:
    """[cascade] (validated key by key already), checked against the other tables; None
    when the job has none. [request] model becomes the first stage's."""
    if table is None:
        return None
    if "models" not in table:
        raise fail("[cascade] models", "is required (2 or more models, cheapest first)")
    settings = CascadeSettings(**table)
    if extract.kind != "choice":
        raise fail(
            "[cascade]",
            f'needs [extract] kind = "choice" (got {extract.kind!r}): stages are compared '
            "by their labels",
        )
    if "model" in overrides:
        raise fail("[overrides] model", "cannot be used with [cascade]: its models are the stages'")
    temperature = request.get("temperature")
    votes = settings.signal == "votes" and settings.samples >= 2
    if votes and not temperature and "temperature" not in overrides:
        raise fail(
            "[request] temperature",
            f"must be above 0 with [cascade] samples = {settings.samples} (got "
            f"{'none' if temperature is None else temperature}): identical requests at "
            "temperature 0 give one answer, so their agreement says nothing",
        )
    model = request.get("model")
    if model is not None and model != settings.models[0]:
        raise fail(
            "[request] model",
            f"is {model!r} but [cascade] models start with {settings.models[0]!r}: leave it "
            "out (the cascade names every stage's model) or make it the first",
        )
    request["model"] = settings.models[0]
    return settings
