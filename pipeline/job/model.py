"""What a validated job is: frozen dataclasses, built by `job.load` and read everywhere."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.errors import UsageError
from pipeline.job.template import Template, system_templates

InputPath = Path | str  # a local path (file, directory, glob), or a URL kept as written


def input_path(text: str | Path) -> InputPath:
    """`[job] input` as a job holds it: a URL stays text (a Path would fold its //)."""
    return without_credentials(text) if isinstance(text, str) and "://" in text else Path(text)


def without_credentials(url: str) -> str:
    """`url`, refused (one line that does not repeat it) if it carries credentials
    (`s3://KEY:SECRET@bucket/...`, which pyarrow would take): messages print a URL, and a
    mirror is named after it; the store's credentials come from the environment only."""
    try:
        carries = bool(urlsplit(url).netloc.rpartition("@")[0])
    except ValueError:
        carries = False
    if carries:
        raise UsageError(
            f"a URL with credentials in it ({url.split('://', 1)[0]}://...@...) is not taken: "
            "it would be printed in messages and name a directory on disk; give the store's "
            "credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE)"
        )
    return url


MIRRORS_ENV = "PIPELINE_MIRRORS"


def mirror_of(url: str) -> Path:
    """The local mirror of an output at `url` (store.remote): a readable name and a digest
    of the URL, under $PIPELINE_MIRRORS or ~/.cache/pipeline/mirrors."""
    base = Path(os.environ.get(MIRRORS_ENV) or Path.home() / ".cache" / "pipeline" / "mirrors")
    url = without_credentials(url)
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in url.split("://")[-1])
    return base / f"{readable[-80:]}-{hashlib.sha256(url.encode()).hexdigest()[:10]}"


def output_place(text: str | Path) -> tuple[Path, str | None]:
    """`[job] output` as (the directory a run writes, the URL it is put to or None)."""
    if isinstance(text, str) and "://" in text:
        return mirror_of(text.rstrip("/")), text.rstrip("/")
    return Path(text), None


def absolute(path: InputPath) -> InputPath:
    """The input as any process finds it, whatever its working directory (a URL as is)."""
    return path.resolve() if isinstance(path, Path) else path


@dataclass(frozen=True)
class ApiSettings:
    base_url: str = "https://api.aisa.one"
    format: str = "anthropic"
    api_key_env: str = "AISA_API_KEY"
    auth: str = "bearer"
    anthropic_version: str = "2023-06-01"
    mode: str = "online"  # "batch": the Message Batches API, at half the price


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
    rate_limit_patience_s: float = 600.0  # no 2xx for any row this long: stop, rows to do
    max_cost_usd: float | None = None
    # a cascade stage's: (model, requests) its row may still need at later stages, reserved
    # from the budget beside each of its requests (a row's worst case is all it may need)
    later_requests: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class BatchSettings:
    max_requests: int = 100_000  # a batch at most (the API also caps one at 256 MB)
    poll_s: float = 30.0  # how often a waiting run looks at its batches


@dataclass(frozen=True)
class RunSettings:
    engine: str = "local"  # "ray": worker actors on a Ray cluster (pipeline.ray)
    address: str | None = None  # the cluster's; None: a local one for the run
    workers: int | None = None  # worker actors; None: the cluster's CPUs


@dataclass(frozen=True)
class CascadeSettings:
    """[cascade]: the models asked in turn, cheapest first; a row's label stands at the
    first stage confident enough (cascade/thresholds.py sets how confident is enough)."""

    models: tuple[str, ...]
    samples: int = 3  # answers a row at each stage but the last (signal "votes")
    target: float = 0.95  # share of rows whose final label agrees with the last model's
    confidence: float = 0.95  # probability that the target holds
    calibration_rows: int = 200  # rows every stage answers, to set the thresholds on
    signal: str = "votes"  # or "stated": one answer with a 0-100 confidence

    def samples_at(self, stage: int) -> int:
        """Requests a row takes at `stage`: one at the last, and one with a stated
        confidence."""
        last = stage == len(self.models) - 1
        return 1 if last or self.signal == "stated" else self.samples


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
    input: InputPath  # input.locations: a file, a directory or glob, a URL
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
    batch: BatchSettings = BatchSettings()
    pricing: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    source_file: Path | None = None
    count_tokens: bool = False  # [estimate]: count input tokens with the API, not locally
    cache: str = "off"  # [request] cache: "auto" marks the shared prefix (cache.prefix)
    run: RunSettings = RunSettings()
    cascade: CascadeSettings | None = None
    output_url: str | None = None  # [job] output as a URL: `output` is its local mirror
    fold_s: float = 60.0  # an output at a URL: the longest answers wait in the journal
    # a text block sent after the prompt's, in the same message (a cascade stage's request
    # for a stated confidence): the prompt itself is sent as written
    prompt_after: str | None = None

    @property
    def model(self) -> str:
        return str(self.request["model"])

    @property
    def models(self) -> tuple[str, ...]:
        """Every model the job may ask: its cascade's stages, or its one model."""
        return self.cascade.models if self.cascade is not None else (self.model,)

    @property
    def max_tokens(self) -> int:
        return int(self.request["max_tokens"])

    def template_columns(self) -> set[str]:
        columns = set(self.prompt.columns)
        for template in system_templates(self.system):
            columns |= set(template.columns)
        return columns
