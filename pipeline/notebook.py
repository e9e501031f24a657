"""What a notebook needs beside `run_job`: `run_prompt`, one call from rows and a prompt to
a DataFrame of answers (the job built from keywords, no job file), and `read_results`, a
run's results as a polars DataFrame. Both keep every promise a job file's run keeps: the
output directory holds what was paid for, and calling again resumes (sends nothing new).

    import polars as pl
    from pipeline import run_prompt
    reviews = pl.read_csv("sample_data/reviews.csv")
    labelled = run_prompt(reviews, "Review: {text}\\nOne word: positive, negative or neutral.",
                          model="claude-haiku-4-5-20251001", choices=["positive", "negative",
                          "neutral"], simulate=True)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.api import run_job
from pipeline.job.load import job_from_dict
from pipeline.job.model import Job
from pipeline.job.options import InputFrame
from pipeline.run.frames import as_polars, is_frame
from pipeline.run.progress import RunSummary
from pipeline.store.layout import RESULTS_FILE


def read_results(where: RunSummary | str | Path) -> pl.DataFrame:
    """A run's results (its summary, or its output directory) as a polars DataFrame: every
    row's latest outcome, in input order, with every column of OUTPUT/results.parquet."""
    from pipeline.reports.report import load_results

    place = where.output_dir if isinstance(where, RunSummary) else where
    if isinstance(place, str) and "://" in place:  # an output at a URL: its results object
        return pl.read_parquet(f"{place.rstrip('/')}/{RESULTS_FILE}")
    return load_results(Path(place))


def run_prompt(
    input: str | Path | InputFrame,
    prompt: str,
    *,
    model: str,
    choices: Sequence[str] | None = None,
    fields: Mapping[str, str] | None = None,
    label_column: str = "label",
    system: str | None = None,
    max_tokens: int = 1024,
    temperature: float | None = None,
    id_column: str | None = None,
    keep_columns: Sequence[str] | None = None,
    output: str | Path | None = None,
    name: str = "prompt",
    concurrency: int | None = None,
    rpm: float | None = None,
    max_cost: float | None = None,
    batch: bool = False,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    simulate: bool = False,
    base_url: str | None = None,
    api_key: str | None = None,
    fresh: bool = False,
    show_progress: bool | None = None,
) -> pl.DataFrame:
    """Send `prompt` (a `{column}` template) for every row of `input` (a DataFrame of any
    kind `run_job` takes, or a CSV / Parquet / JSONL path) to `model`, and return the
    results as a polars DataFrame in input order: the input's columns (`keep_columns`,
    default every one a template could print), the answer, usage, cost and label columns.

    The label: `choices` (one of these words, the column `label_column`), `fields` (a JSON
    object: name -> "string" / "integer" / "number" / "boolean" / "json"), or neither (the
    answer's text). `output` is where the paid answers are kept (default
    out/NAME-DIGEST, a digest of the prompt, model, label and input: the same call again
    resumes and sends nothing; another prompt gets its own directory). The rest are
    `run_job`'s options and the job file's keys of the same names.
    """
    frame = as_polars(input) if is_frame(input) else None
    keep = list(keep_columns) if keep_columns is not None else _printable(frame, input)
    request: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "prompt": prompt}
    if system is not None:
        request["system"] = system
    if temperature is not None:
        request["temperature"] = temperature
    table: dict[str, Any] = {
        "job": {"name": name, "input": str(input) if frame is None else "<DataFrame>"},
        "request": request,
        "extract": _extract(choices, fields, label_column),
    }
    if id_column is not None:
        table["job"]["id_column"] = id_column
    if keep:
        table["job"]["keep_columns"] = [c for c in keep if c != id_column]
    job = job_from_dict(table, default_name=name)
    where = output if output is not None else _default_output(job, frame)
    summary = run_job(
        job, input=frame if frame is not None else None, output=where, limit=limit,
        sample=sample, seed=seed, concurrency=concurrency, rpm=rpm, max_cost=max_cost,
        simulate=simulate, fresh=fresh, batch=batch, base_url=base_url,
        show_progress=show_progress, api_key=api_key,
    )  # fmt: skip
    return read_results(summary)


def _extract(
    choices: Sequence[str] | None, fields: Mapping[str, str] | None, column: str
) -> dict[str, Any]:
    if choices is not None and fields is not None:
        from pipeline.errors import UsageError

        raise UsageError("run_prompt: choices or fields, not both (one label a row)")
    if choices is not None:
        return {"kind": "choice", "column": column, "choices": list(choices)}
    if fields is not None:
        return {"kind": "json", "fields": dict(fields)}
    return {"kind": "text", "column": column}


def _printable(frame: pl.DataFrame | None, input: Any) -> list[str]:
    """Every column a template could print: what the notebook sees beside its answers."""
    from pipeline.input.source import DEFAULT_ID, plain, scan_rows
    from pipeline.job.model import input_path
    from pipeline.schema import ROW_INDEX

    if frame is not None:
        schema = frame.schema
    else:  # a path or a URL, as a job file's input (a Path would fold a URL's //)
        schema = scan_rows(input_path(input), None).collect_schema()
    return [n for n, t in schema.items() if plain(t) and n not in (ROW_INDEX, DEFAULT_ID)]


def _default_output(job: Job, frame: pl.DataFrame | None) -> Path:
    """out/NAME-DIGEST: the digest of what shapes the answers (prompt, system, model, the
    label, the input's content), so the same call finds its answers and another does not
    meet a refusal."""
    from pipeline.run.frames import frame_digest
    from pipeline.store.manifest import input_identity

    content = frame_digest(frame) if frame is not None else input_identity(job.input)
    shape = [job.prompt.text, job.system, dict(job.request), str(job.extract), content]
    digest = hashlib.sha256(json.dumps(shape, default=str).encode()).hexdigest()[:10]
    return Path("out") / f"{job.name}-{digest}"
