"""Bulk LLM prompts from CSV / Parquet / JSONL to priced Parquet: rate-limited, resumable.

    from pipeline import run_job
    summary = run_job("jobs/label_reviews.toml", simulate=True)

Names are imported on first use, so `python -m pipeline.simulator` starts without loading
the runner's dependencies.

Each package's `__init__` says what it may import; for the modules at the top (a module
may always import its own package; tests/test_structure.py checks every rule):

    errors, schema    May import: nothing.
    ahead             May import: nothing.
    exact             May import: nothing.
    pricing           May import: errors, schema, providers (base), store (durable, layout).
    api, notebook     May import: everything.
    cli               May import: everything.
    __main__          May import: cli.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.api import run_job as run_job
    from pipeline.api import run_job_async as run_job_async
    from pipeline.errors import PipelineError as PipelineError
    from pipeline.job.load import job_from_dict as job_from_dict
    from pipeline.job.load import load_job as load_job
    from pipeline.job.model import Job as Job
    from pipeline.notebook import read_results as read_results
    from pipeline.notebook import run_prompt as run_prompt
    from pipeline.run.progress import RunSummary as RunSummary

_HOMES = {
    "run_job": "pipeline.api",
    "run_job_async": "pipeline.api",
    "PipelineError": "pipeline.errors",
    "Job": "pipeline.job.model",
    "job_from_dict": "pipeline.job.load",
    "load_job": "pipeline.job.load",
    "RunSummary": "pipeline.run.progress",
    "read_results": "pipeline.notebook",
    "run_prompt": "pipeline.notebook",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
