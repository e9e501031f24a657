"""What a run may be told besides its job file, declared once: `RunOptions`.

`pipeline run`'s flags are these fields (cli.py builds a RunOptions from them, and a test
checks that every flag but the command line's own is one), `run_job`'s keywords are these
fields (api.py), and `load.with_options` applies those that change the job (each checked
as the job file's key it replaces). None / False: the job's own setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from pipeline.job.model import Job

    # a polars DataFrame / LazyFrame, a pyarrow Table, or a pandas DataFrame (Any: pandas
    # is not a dependency)
    InputFrame: TypeAlias = pl.DataFrame | pl.LazyFrame | pa.Table | Any
else:
    InputFrame = Any


@dataclass(frozen=True)
class RunOptions:
    input: str | Path | InputFrame | None = None  # instead of [job] input (or a DataFrame)
    output: str | Path | None = None  # instead of [job] output
    base_url: str | None = None  # instead of [api] base_url
    limit: int | None = None  # only the first N input rows
    sample: int | None = None  # N rows chosen at random by their ids (input/sample.py)
    seed: int = 0  # --sample's seed
    concurrency: int | None = None  # instead of [limits] concurrency
    rpm: float | None = None  # instead of [limits] requests_per_minute
    max_cost: float | None = None  # instead of [limits] max_cost_usd
    simulate: bool = False  # against the built-in simulator on loopback
    retry_errors: bool = False  # re-send only rows whose recorded outcome is an error
    fresh: bool = False  # start over; earlier results moved aside
    set_aside_damaged: bool = False  # damaged part files moved aside, their rows sent again
    batch: bool = False  # [api] mode = "batch"
    detach: bool = False  # batch mode: submit and stop at once (exit 5)
    ray: str | None = None  # a Ray cluster's address ("local": one for the run)
    workers: int | None = None  # --ray: worker actors
    show_progress: bool | None = None  # None: a bar when stderr is a terminal


def runs_on_ray(job: Job, options: RunOptions) -> bool:
    """Whether the run's rows go to Ray: `--ray`, or `[run] engine = "ray"` (api.py's
    engines; the command line asks first, to load nothing Ray does not need)."""
    return options.ray is not None or job.run.engine == "ray"
