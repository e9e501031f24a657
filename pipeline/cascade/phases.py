"""A cascade's phases. Each is an ordinary run of the job with one model over some of its
rows, in an output directory of its own under OUTPUT/cascade/ (store.layout), so all that a
run keeps holds for every phase: a request answered is journaled and never bought again,
costs are exact, batches are collected, the budget is kept.

A phase's rows are its input file: each row `samples` times (identical requests, keyed
ROW:SAMPLE, one after another so that they are sent together), with the columns its
requests are made of, as read. The file is written once, when the phase first starts; the
rows of a later stage follow from the earlier stages' answers, which are final by then.

A stage whose threshold a row can miss before all its samples are in runs in two rounds
(thresholds.first_round): first-K asks each row the first samples, rest-K asks the rest
only of rows that could still stand (routing.in_reach), so a row sure to go on to the
next stage does not pay for the samples that could not keep it. (A first-round answer that
changes later, an error retried by --retry-errors, changes no later phase's rows: its row
went on, and the later stage's answer stands.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from pipeline.input.source import Source
from pipeline.job.model import CascadeSettings, Job
from pipeline.schema import COST_COLUMNS, ROW_INDEX, TOKEN_COLUMNS
from pipeline.store import durable
from pipeline.store.layout import RESULTS_FILE, cascade_phase

KEY = "cascade_key"  # a phase's id column: ROW:SAMPLE
SAMPLE = "cascade_sample"
# signal = "stated": a text block after the prompt (the prompt itself is sent as written)
STATED_INSTRUCTION = (
    "After your answer, write on a last line of its own `Confidence: <0-100>`: how sure "
    "you are that your answer is right."
)
STATED = re.compile(r"confidence\s*[:=]\s*(\d{1,3})(?:\s*%)?", re.IGNORECASE)


@dataclass(frozen=True)
class Phase:
    """Stage `stage`'s requests for `rows` (input positions, ascending): of the `samples`
    a row's votes count, those numbered `asks` (None: all of them)."""

    name: str  # calibration-K, stage-K, or a stage in two rounds: first-K, then rest-K
    stage: int
    model: str
    samples: int
    rows: pl.Series
    stated: bool = False  # asks for a stated confidence beside the label
    asks: range | None = None

    @property
    def asked(self) -> range:
        return self.asks if self.asks is not None else range(self.samples)

    @property
    def first_round(self) -> bool:
        """Its rows' votes wait for a later phase's answers (rest-K)."""
        return self.asked.stop < self.samples

    def paths(self, output: Path) -> tuple[Path, Path]:
        return cascade_phase(output, self.name)


def write_phase_input(source: Source, job: Job, phase: Phase) -> None:
    """The phase's rows as an input file, unless an earlier run wrote it already (its
    digest is in the phase's job.json: a run of the phase reads the same rows again)."""
    path, _ = phase.paths(job.output)
    if path.exists():
        return
    columns = sorted({*job.template_columns(), *job.overrides.values()})
    frame = source.frame_of(columns, phase.rows)
    samples = pl.DataFrame({SAMPLE: list(phase.asked)}, schema={SAMPLE: pl.Int64})
    rows = (
        frame.join(samples, how="cross")
        .sort([ROW_INDEX, SAMPLE])
        .select(pl.format("{}:{}", ROW_INDEX, SAMPLE).alias(KEY), *columns)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    durable.write_with(path, lambda temporary: rows.write_parquet(temporary))


def later_requests(settings: CascadeSettings, phase: Phase) -> tuple[tuple[str, int], ...]:
    """(model, requests) that each of the phase's requests may still lead to for its row:
    the rest of its stage's samples (a first round), then one stage after another."""
    later = tuple(
        (settings.models[k], settings.samples_at(k))
        for k in range(phase.stage + 1, len(settings.models))
    )
    if phase.first_round:
        return ((phase.model, phase.samples - phase.asked.stop), *later)
    return later


def phase_job(job: Job, phase: Phase, later: tuple[tuple[str, int], ...]) -> Job:
    """The job one phase runs: the phase's model on the phase's rows, into its directory.
    `later`: the requests each of its requests may still lead to (the budget's worst case)."""
    path, output = phase.paths(job.output)
    return replace(
        job,
        name=f"{job.name} {phase.name}",
        input=path,
        output=output,
        prompt_after=STATED_INSTRUCTION if phase.stated else None,
        request={**job.request, "model": phase.model},
        id_column=KEY,
        keep_columns=(),
        gold_column=None,
        limits=replace(job.limits, later_requests=later),
        cascade=None,
    )


ANSWER_COLUMNS = ("status", "response_text", "model", *TOKEN_COLUMNS, *COST_COLUMNS)


def phase_answers(
    job: Job, phase: Phase, columns: Sequence[str] | None = ANSWER_COLUMNS
) -> pl.DataFrame:
    """The phase's answered requests: ROW_INDEX, SAMPLE, the label (null unless valid),
    the stated confidence (null unless asked and given) and the answer's `columns` (None:
    every column of its results)."""
    _, output = phase.paths(job.output)
    results = output / RESULTS_FILE
    label = job.extract.column
    if not results.exists():
        return pl.DataFrame()
    wanted = None if columns is None else [KEY, *columns, label, "label_status"]
    frame = pl.read_parquet(results, columns=wanted)
    parts = pl.col(KEY).str.split_exact(":", 1)
    return frame.with_columns(
        parts.struct.field("field_0").cast(pl.Int64).alias(ROW_INDEX),
        parts.struct.field("field_1").cast(pl.Int64).alias(SAMPLE),
        pl.when(pl.col("label_status") == "ok").then(pl.col(label)).alias(label),
        pl.col("response_text")
        .map_elements(stated_confidence, return_dtype=pl.Float64)
        .alias("stated"),
    ).drop(KEY)


def stated_confidence(text: str | None) -> float | None:
    """A stated 'Confidence: N' (0-100) as a share; None when there is none (the last one
    counts: a model may restate it)."""
    found = STATED.findall(text or "")
    if not found:
        return None
    return min(int(found[-1]), 100) / 100.0
