"""The job file: load the TOML, validate every key, and hold the result as a frozen `Job`.

Every mistake becomes one `JobFileError` line naming the file, the table and the key, so a
user fixes it without reading a traceback. Checks that need the input's columns (template
names, keep_columns) happen in `runner.prepare`, still before anything is sent.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.checks import (
    Check,
    Invalid,
    boolean,
    mapping,
    mapping_list,
    number,
    string,
    string_list,
)
from pipeline.errors import JobFileError
from pipeline.render import Template, TemplateError, system_templates
from pipeline.structured import fields_from_schema


def _system(value: Any) -> str | list[dict[str, Any]]:
    if isinstance(value, str):
        return value
    blocks = mapping_list(value)
    for block in blocks:
        if not isinstance(block.get("text"), str):
            raise Invalid("each system block must have a string `text`")
    return blocks


def _tool_choice(value: Any) -> dict[str, Any]:
    table = mapping(value)
    string(("auto", "any", "tool", "none"))(table.get("type"))
    if table["type"] == "tool" and not isinstance(table.get("name"), str):
        raise Invalid('type = "tool" needs the tool\'s `name`')
    return table


def _thinking(value: Any) -> dict[str, Any]:
    table = mapping(value)
    string(("enabled", "disabled", "adaptive"))(table.get("type"))
    if table["type"] == "enabled":
        if "budget_tokens" not in table:
            raise Invalid('type = "enabled" needs budget_tokens', "budget_tokens")
        try:
            number(1024, integer=True)(table["budget_tokens"])
        except Invalid as e:
            raise Invalid(str(e), "budget_tokens") from None
    return table


FIELD_TYPE_NAMES = ("string", "integer", "number", "boolean", "json")


def _field_types(value: Any) -> dict[str, str]:
    table = mapping(value)
    for name, kind in table.items():
        if kind not in FIELD_TYPE_NAMES:
            raise Invalid(f"must be one of {', '.join(FIELD_TYPE_NAMES)}", name)
    return table


def url(value: Any) -> str:
    text = str(string()(value))
    if not text.startswith(("http://", "https://")):
        raise Invalid(f"must start with http:// or https:// (got {text!r})")
    return text


def _no_stream(value: Any) -> bool:
    if boolean(value):
        raise Invalid("must be false: this version sends non-streaming requests only")
    return False


SECTIONS: dict[str, dict[str, Check]] = {
    "job": {
        "name": string(),
        "input": string(),
        "id_column": string(),
        "output": string(),
        "keep_columns": string_list,
        "gold_column": string(),
    },
    "api": {
        "base_url": url,
        "format": string(("anthropic", "openai")),
        "api_key_env": string(),
        "auth": string(("bearer", "x-api-key")),
        "anthropic_version": string(),
    },
    "request": {
        "model": string(),
        "max_tokens": number(1, integer=True),
        "prompt": string(),
        "system": _system,
        "temperature": number(0, 1),
        "top_p": number(0, 1),
        "top_k": number(0, integer=True),
        "stop_sequences": string_list,
        "stream": _no_stream,
        "tools": mapping_list,
        "tool_choice": _tool_choice,
        "thinking": _thinking,
        "metadata": mapping,
        "service_tier": string(("auto", "standard_only")),
        "cache_control": mapping,
        "extra": mapping,
    },
    "limits": {
        "concurrency": number(1, integer=True),
        "requests_per_minute": number(above=0),
        "input_tokens_per_minute": number(above=0),
        "output_tokens_per_minute": number(above=0),
        "tokens_per_minute": number(above=0),
        "max_retries": number(0, integer=True),
        "timeout_s": number(above=0),
        "connect_timeout_s": number(above=0),
        "stream_timeout_s": number(0.1, 86_400),
        "max_answer_bytes": number(1024, 2**32, integer=True),
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
    "estimate": {"count_tokens": boolean},  # `pipeline estimate` asks the API's count_tokens
    "pricing": {},  # model ids are free-form keys, checked by `_pricing_entry`
}
PRICE_KEYS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")


@dataclass(frozen=True)
class ApiSettings:
    base_url: str = "https://api.aisa.one"
    format: str = "anthropic"
    api_key_env: str = "AISA_API_KEY"
    auth: str = "bearer"
    anthropic_version: str = "2023-06-01"


@dataclass(frozen=True)
class Limits:
    concurrency: int = 16
    requests_per_minute: float | None = None
    input_tokens_per_minute: float | None = None
    output_tokens_per_minute: float | None = None
    tokens_per_minute: float | None = None  # input + output together (the gateway's TPM)
    max_retries: int = 8
    # an attempt, whole: sending, waiting, reading; also the longest silence of a stream
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    stream_timeout_s: float = 3600.0  # a streamed attempt (max_tokens > 21,333), whole
    max_answer_bytes: int = 32 * 1024 * 1024  # longer: a malformed answer, never read whole
    max_cost_usd: float | None = None


@dataclass(frozen=True)
class ExtractSpec:
    kind: str = "text"
    column: str = "label"  # text / choice: the label column
    choices: tuple[str, ...] = ()
    fields: Mapping[str, str] = field(default_factory=dict)  # json / tool: name -> type
    tool: str | None = None  # tool: the tool whose input is the label


@dataclass(frozen=True)
class Job:
    """A validated job: what to read, how to ask, how fast, and what to pull out."""

    name: str
    input: Path
    output: Path
    prompt: Template
    request: Mapping[str, Any]  # API fields sent as they are (model, max_tokens, ...)
    system: str | list[dict[str, Any]] | None = None
    id_column: str | None = None
    keep_columns: tuple[str, ...] = ()
    gold_column: str | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)  # API field -> input column
    api: ApiSettings = ApiSettings()
    limits: Limits = Limits()
    extract: ExtractSpec = ExtractSpec()
    pricing: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    source_file: Path | None = None
    count_tokens: bool = False  # [estimate]: count input tokens with the API, not locally

    @property
    def model(self) -> str:
        return str(self.request["model"])

    @property
    def max_tokens(self) -> int:
        return int(self.request["max_tokens"])

    def template_columns(self) -> set[str]:
        columns = set(self.prompt.columns)
        for template in system_templates(self.system):
            columns |= set(template.columns)
        return columns


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
    job_t, request = tables["job"], dict(tables["request"])

    def fail(where: str, message: str) -> JobFileError:
        return JobFileError(f"{source}: {where}: {message}")

    _check_across_keys(tables, fail)
    extract = _extract_spec(tables["extract"], request, fail)
    try:
        prompt = Template(request.pop("prompt"))
        system = request.pop("system", None)
        system_templates(system)  # parses, so a malformed system template fails here
    except TemplateError as e:
        raise fail("[request] prompt/system", str(e)) from None
    request.update(request.pop("extra", {}))
    name = job_t.get("name", default_name)
    return Job(
        name=name,
        input=Path(job_t["input"]),
        output=Path(job_t.get("output", f"out/{name}")),
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
        pricing=tables["pricing"],
        source_file=Path(source) if source != "job" else None,
        count_tokens=tables["estimate"].get("count_tokens", False),
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
    if choice.get("type") in (None, "auto", "none") or choice.get("name", name) != name:
        request["tool_choice"] = {"type": "tool", "name": name}  # the label needs the call
    fields = dict(spec.fields) or fields_from_schema(tools[name].get("input_schema") or {})
    if not fields:
        raise fail("[extract] fields", f"tool {name!r} declares no input properties")
    return replace(spec, tool=name, fields=fields)


def _check_across_keys(
    tables: Mapping[str, Mapping[str, Any]], fail: Callable[[str, str], JobFileError]
) -> None:
    """Required keys, and rules that tie one key to another."""
    request = tables["request"]
    for key in ("model", "max_tokens", "prompt"):
        if key not in request:
            raise fail(f"[request] {key}", "is required")
    if "input" not in tables["job"]:
        raise fail("[job] input", "is required")
    budget = request.get("thinking", {}).get("budget_tokens")
    if budget is not None and budget >= request["max_tokens"]:
        raise fail(
            "[request] thinking.budget_tokens",
            f"must be < max_tokens ({budget} >= {request['max_tokens']})",
        )


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
