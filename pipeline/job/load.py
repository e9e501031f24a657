"""The job file: load the TOML, validate every key, and hold the result as a frozen `Job`.

Every mistake becomes one `JobFileError` line naming the file, the table and the key, so a
user fixes it without reading a traceback. Checks that need the input's columns (template
names, keep_columns) happen in `run.plan.prepare`, still before anything is sent.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.errors import JobFileError, UsageError
from pipeline.job.cascade import CASCADE_KEYS, cascade_settings
from pipeline.job.checks import Check, Invalid, boolean, mapping, number, string, string_list
from pipeline.job.fields import REQUEST_FIELDS, across_fields, check_extra, thinking_on
from pipeline.job.model import (
    ApiSettings,
    BatchSettings,
    ExtractSpec,
    Job,
    Limits,
    RunSettings,
    input_path,
    output_place,
)
from pipeline.job.options import RunOptions
from pipeline.job.template import Template, TemplateError, system_templates
from pipeline.providers.registry import PROVIDERS, batch_formats

FIELD_TYPE_NAMES = ("string", "integer", "number", "boolean", "json")


def _field_types(value: Any) -> dict[str, str]:
    """[extract] fields: name -> a type, or a type and "?" (optional: may be missing or null)."""
    table = mapping(value)
    for name, kind in table.items():
        if not isinstance(kind, str) or kind.removesuffix("?") not in FIELD_TYPE_NAMES:
            names = ", ".join(FIELD_TYPE_NAMES)
            raise Invalid(f'must be one of {names}, each optionally ending in "?"', name)
    return table


def url(value: Any) -> str:
    text = str(string()(value))
    if not text.startswith(("http://", "https://")):
        raise Invalid(f"must start with http:// or https:// (got {text!r})")
    return text


def path_text(value: Any) -> str:
    """A path as a string: not empty (it would mean the current directory) and without a
    NUL byte (no file system takes one)."""
    text = str(string()(value))
    if not text.strip():
        raise Invalid("must be a path (got an empty string)")
    if "\0" in text:
        raise Invalid("must not contain a NUL character")
    return text


TOKENS_PER_MINUTE_CAP = 10_000_000_000
RUN_ENGINES = ("local", "ray")  # [run] engine: api.ENGINES runs them (batch is [api] mode)
DAY_S = 86_400

SECTIONS: dict[str, dict[str, Check]] = {
    "job": {
        "name": string(),
        "input": path_text,
        "id_column": string(),
        "output": path_text,
        "keep_columns": string_list,
        "gold_column": string(),
        "fold_s": number(1, DAY_S),
    },
    "api": {
        "base_url": url,
        "format": string(tuple(PROVIDERS)),
        "api_key_env": string(),
        "auth": string(("bearer", "x-api-key")),
        "anthropic_version": string(),
        "mode": string(("online", "batch")),
    },
    "batch": {
        "max_requests": number(1, 100_000, integer=True),
        "poll_s": number(0.1, DAY_S),
    },
    "request": {
        **REQUEST_FIELDS,
        "prompt": string(),
        "cache": string(("off", "auto")),  # ours: where to mark cache_control (cache.prefix)
        "extra": mapping,  # API fields this version does not know; known ones checked too
    },
    "limits": {
        # bounds refuse the absurd (1e-300 requests a minute, 1e8 workers): such a job
        # would accept the file and then never send, or exhaust the machine
        "concurrency": number(1, 10_000, integer=True),
        "requests_per_minute": number(0.01, 1_000_000),
        "input_tokens_per_minute": number(1, TOKENS_PER_MINUTE_CAP),
        "output_tokens_per_minute": number(1, TOKENS_PER_MINUTE_CAP),
        "tokens_per_minute": number(1, TOKENS_PER_MINUTE_CAP),
        "max_retries": number(0, 1000, integer=True),
        "timeout_s": number(0.1, DAY_S),
        "connect_timeout_s": number(0.1, DAY_S),
        "stream_timeout_s": number(0.1, 86_400),
        "max_answer_bytes": number(1024, 2**32, integer=True),
        "rate_limit_patience_s": number(1, 7 * 86_400),
        "max_cost_usd": number(above=0),
    },
    "extract": {
        "kind": string(("text", "choice", "json", "tool")),
        "column": string(),
        "choices": string_list,
        "fields": _field_types,
        "tool": string(),
    },
    "overrides": {
        name: string()
        for name in ("model", "max_tokens", "temperature", "top_p", "top_k", "system")
    },
    "estimate": {"count_tokens": boolean},
    "run": {  # where the job runs: this process (default) or a Ray cluster
        "engine": string(RUN_ENGINES),
        "address": string(),
        "workers": number(1, 10_000, integer=True),
    },  # `pipeline estimate` asks the API's count_tokens
    "cascade": CASCADE_KEYS,  # job.cascade: the models asked in turn, cheapest first
    "pricing": {},  # model ids are free-form keys, checked by `_pricing_entry`
}
PRICE_KEYS = (
    "input", "output", "cache_write_5m", "cache_write_1h", "cache_read", "min_cache_tokens",
)  # fmt: skip


def load_job(path: str | Path) -> Job:
    """Read and validate a job file; every problem is one `JobFileError` line."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobFileError(f"{path}: job file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise JobFileError(f"{path}: cannot read job file: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise JobFileError(f"{path}: invalid TOML: {e}") from None
    return job_from_dict(raw, source=str(path), default_name=path.stem)


def job_from_dict(raw: Mapping[str, Any], *, source: str = "job", default_name: str = "job") -> Job:
    """Validate a job given as nested dicts (the parsed TOML, or built in code)."""
    tables = _validated_tables(raw, source)

    def fail(where: str, message: str) -> JobFileError:
        return JobFileError(f"{source}: {where}: {message}")

    job_t, request = tables["job"], _merged_request(tables["request"], fail)
    extract = _extract_spec(tables["extract"], request, fail)
    present = tables["cascade"] if "cascade" in raw else None  # an empty one is refused
    cascade = cascade_settings(present, request, extract, tables["overrides"], fail)
    _check_across_keys(tables, request, fail)
    prompt, system = _templates(request, fail)
    cache = request.pop("cache", "off")
    name = job_t.get("name", default_name)
    output, output_url = output_place(job_t.get("output", f"out/{name}"))
    return Job(
        name=name,
        input=input_path(job_t["input"]),
        output=output,
        output_url=output_url,
        fold_s=job_t.get("fold_s", Job.fold_s),
        prompt=prompt,
        request=request,
        system=system,
        id_column=job_t.get("id_column"),
        keep_columns=job_t.get("keep_columns", ()),
        gold_column=job_t.get("gold_column"),
        overrides=tables["overrides"],
        api=ApiSettings(**tables["api"]),
        limits=Limits(**tables["limits"]),
        extract=extract,
        batch=BatchSettings(**tables["batch"]),
        pricing=tables["pricing"],
        source_file=Path(source) if source != "job" else None,
        count_tokens=tables["estimate"].get("count_tokens", False),
        cache=cache,
        run=RunSettings(**tables["run"]),
        cascade=cascade,
    )


def _extract_spec(
    raw: Mapping[str, Any], request: dict[str, Any], fail: Callable[[str, str], JobFileError]
) -> ExtractSpec:
    """The [extract] table, with a tool extraction's fields and tool_choice filled in."""
    spec = ExtractSpec(**raw)
    if spec.kind == "choice" and not spec.choices:
        raise fail("[extract] choices", 'is required when kind = "choice"')
    if spec.kind == "json" and not spec.fields:
        raise fail("[extract] fields", 'is required when kind = "json" (name = "type", ...)')
    if spec.kind != "tool":
        return spec
    tools = {t.get("name"): t for t in request.get("tools", [])}
    choice = request.get("tool_choice") or {}
    name = spec.tool or choice.get("name") or (next(iter(tools)) if len(tools) == 1 else None)
    if name not in tools:
        raise fail("[extract] tool", f"names no tool of [request] tools ({name!r})")
    if thinking_on(request):  # the forced call below would be refused, every row
        raise fail(
            "[extract] kind",
            '"tool" forces a tool call, which the API refuses with thinking on: '
            'use kind = "json", or turn thinking off',
        )
    if choice.get("type") in (None, "auto", "none") or choice.get("name", name) != name:
        request["tool_choice"] = {"type": "tool", "name": name}  # the label needs the call
    fields = dict(spec.fields) or fields_from_schema(tools[name].get("input_schema") or {})
    if not fields:
        raise fail("[extract] fields", f"tool {name!r} declares no input properties")
    return replace(spec, tool=name, fields=fields)


def fields_from_schema(schema: Mapping[str, Any]) -> dict[str, str]:
    """Field types of a tool's input_schema: its top-level properties, those it does not
    list as `required` optional ("type?": a call may leave them out)."""
    fields = {}
    required = set(schema.get("required") or ())
    for name, spec in (schema.get("properties") or {}).items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        kind = kind if kind in ("string", "integer", "number", "boolean") else "json"
        fields[name] = kind if name in required else f"{kind}?"
    return fields


def _merged_request(
    table: Mapping[str, Any], fail: Callable[[str, str], JobFileError]
) -> dict[str, Any]:
    """[request] with [request.extra] merged in; a known field in extra gets the same
    check as in [request] (extra is for fields this version does not know, not a way
    around the checks)."""
    request = dict(table)
    try:
        request.update(check_extra(request.pop("extra", {}), request))
    except Invalid as e:
        raise fail(f"[request.extra] {e.subkey}", str(e)) from None
    return request


def _templates(
    request: dict[str, Any], fail: Callable[[str, str], JobFileError]
) -> tuple[Template, str | list[dict[str, Any]] | None]:
    """Take the prompt and system templates out of the request (they are not sent as
    written) and parse them, so a malformed one fails here."""
    try:
        prompt = Template(request.pop("prompt"))
        system = request.pop("system", None)
        system_templates(system)
    except TemplateError as e:
        raise fail("[request] prompt/system", str(e)) from None
    if not prompt.columns and not prompt.text.strip():  # every row would be refused
        raise fail("[request] prompt", "is empty: the API refuses an empty message")
    return prompt, system


def _check_across_keys(
    tables: Mapping[str, Mapping[str, Any]],
    request: Mapping[str, Any],
    fail: Callable[[str, str], JobFileError],
) -> None:
    """Required keys, and rules that tie one key to another (after [request.extra] is
    merged, so a field set there counts)."""
    job, api = tables["job"], tables["api"]
    for key in ("model", "max_tokens", "prompt"):
        if key not in request:
            raise fail(f"[request] {key}", "is required")
    if "input" not in job:
        raise fail("[job] input", "is required")
    provider = PROVIDERS[api.get("format", ApiSettings.format)]
    if api.get("mode") == "batch" and not provider.supports_batches:
        needs = f"batch mode needs format = {batch_formats()} (the Message Batches API)"
        raise fail("[api] mode", needs)
    broken = across_fields(request)
    if broken is not None:
        raise fail(f"[request] {broken[0]}", broken[1])


def _validated_tables(raw: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    tables: dict[str, dict[str, Any]] = {}
    for section in raw:
        if section not in SECTIONS:
            known = ", ".join(f"[{s}]" for s in SECTIONS)
            raise JobFileError(f"{source}: [{section}]: unknown table (known: {known})")
    for section, checks in SECTIONS.items():
        values = raw.get(section, {})
        if not isinstance(values, dict):
            raise JobFileError(f"{source}: [{section}]: must be a table")
        tables[section] = _validated_section(section, values, checks, source)
    return tables


def _validated_section(
    section: str, values: Mapping[str, Any], checks: Mapping[str, Check], source: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if section == "pricing":
            out[key] = _pricing_entry(key, value, source)
            continue
        check = checks.get(key)
        if check is None:
            hint = " (put new API fields under [request.extra])" if section == "request" else ""
            raise JobFileError(f"{source}: [{section}] {key}: unknown key{hint}")
        try:
            out[key] = check(value)
        except Invalid as e:
            where = f"{key}.{e.subkey}" if e.subkey else key
            raise JobFileError(f"{source}: [{section}] {where}: {e}") from None
    return out


def _pricing_entry(model: str, value: Any, source: str) -> dict[str, float]:
    where = f"{source}: [pricing] {model}"
    if not isinstance(value, dict):
        raise JobFileError(f"{where}: must be a table like {{ input = 1.0, output = 5.0 }}")
    for key in ("input", "output"):
        if key not in value:
            raise JobFileError(f"{where}.{key}: is required (USD per million tokens)")
    prices: dict[str, float] = {}
    for key, price in value.items():
        if key not in PRICE_KEYS:
            raise JobFileError(f"{where}.{key}: unknown key (known: {', '.join(PRICE_KEYS)})")
        try:
            prices[key] = float(number(0)(price))
        except Invalid as e:
            raise JobFileError(f"{where}.{key}: {e}") from None
    return prices


FLAG_LIMITS = {
    "concurrency": "concurrency",
    "rpm": "requests_per_minute",
    "max_cost": "max_cost_usd",
}


def with_options(job: Job, options: RunOptions) -> Job:
    """The job with the run's options applied (None means: keep the job's value), each
    checked as the job file's key it replaces: a flag is no way around a bound."""
    limits = {
        key: _checked(f"--{flag.replace('_', '-')}", SECTIONS["limits"][key], value)
        for flag, key in FLAG_LIMITS.items()
        if (value := getattr(options, flag)) is not None
    }
    changes: dict[str, Any] = {"limits": replace(job.limits, **limits)}
    for key, check in SECTIONS["limits"].items():  # a Job built in code skipped the file's
        value = getattr(changes["limits"], key, None)
        if key not in limits and value is not None:
            _checked(f"[limits] {key}", check, value)
    for name, path in (("input", options.input), ("output", options.output)):
        if path is not None:
            checked = _checked(f"--{name}", path_text, str(path))
            if name == "input":
                changes[name] = input_path(checked)
            else:
                changes["output"], changes["output_url"] = output_place(checked)
    api = job.api
    if options.base_url is not None:
        api = replace(api, base_url=_checked("--base-url", url, options.base_url))
    if options.batch:
        if not PROVIDERS[api.format].supports_batches:
            raise UsageError(f"--batch: batch mode needs [api] format = {batch_formats()}")
        api = replace(api, mode="batch")
    return replace(job, **changes, api=api)


def _checked(flag: str, check: Check, value: Any) -> Any:
    try:
        return check(value)
    except Invalid as e:
        raise UsageError(f"{flag}: {e}") from None
