"""The notebook's API against the simulator: DataFrames of every kind in (kept in the output
as its input snapshot: a resume sends nothing, another frame is refused), results back as a
polars DataFrame, `run_prompt` from keywords, and a run inside a running event loop."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from pipeline import read_results, run_job, run_prompt
from pipeline.errors import InputError, UsageError
from pipeline.input.source import open_source
from pipeline.job.load import job_from_dict
from pipeline.job.model import Job
from pipeline.simulator.process import SimulatorProcess

CHOICES = ["positive", "negative", "neutral"]
PROMPT = "Review: {text}\nAnswer with one word: positive, negative or neutral."
ROWS = pl.DataFrame(
    {
        "review_id": ["r1", "r2", "r3", "r4", "r5"],
        "text": ["great value", "broke in a day", "it is a chair", "love it", "awful"],
        "stars": [5, 1, 3, 5, 1],
    }
)


def job(tmp_path: Path) -> Job:
    return job_from_dict(
        {
            "job": {
                "input": "unused.csv",
                "output": str(tmp_path / "out"),
                "id_column": "review_id",
            },
            "request": {"model": "claude-haiku-4-5-20251001", "max_tokens": 8, "prompt": PROMPT},
            "extract": {"kind": "choice", "choices": CHOICES},
        }
    )


def sent(sim: SimulatorProcess) -> int:
    return int(sim.stats()["requests"])


def run(tmp_path: Path, sim: SimulatorProcess, frame: Any, **options: Any) -> Any:
    return run_job(
        job(tmp_path), input=frame, base_url=sim.base_url, api_key="sk-test-key",
        show_progress=False, **options,
    )  # fmt: skip


def kinds() -> list[Any]:
    frames: list[Any] = [ROWS, ROWS.lazy(), ROWS.to_arrow()]
    with contextlib.suppress(ImportError):  # pandas is not a dependency
        frames.append(ROWS.to_pandas())
    return frames


def test_every_kind_of_frame_is_one_input_and_resumes_without_sending(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    summary = run(tmp_path, sim, ROWS)
    assert (summary.rows_ok, sent(sim)) == (5, 5)
    results = read_results(summary)
    assert results["review_id"].to_list() == ROWS["review_id"].to_list()  # input order
    assert set(results["label"].to_list()) <= set(CHOICES)
    assert (tmp_path / "out" / "input.parquet").exists()  # the snapshot a resume reads
    for frame in kinds():  # the same rows as another kind of frame: the same input
        again = run(tmp_path, sim, frame)
        assert again.requests == 0 and sent(sim) == 5, type(frame).__name__
    assert read_results(tmp_path / "out").equals(results)


def test_another_frame_on_the_same_output_is_refused_unless_fresh(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    run(tmp_path, sim, ROWS)
    changed = ROWS.with_columns(pl.col("text").str.replace("great", "fine"))
    with pytest.raises(UsageError, match="this frame differs from the one"):
        run(tmp_path, sim, changed)
    assert sent(sim) == 5
    fresh = run(tmp_path, sim, changed, fresh=True)
    assert fresh.requests == 5
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.old-")]
    assert len(kept) == 1 and (kept[0] / "input.parquet").exists()  # paid results kept


def test_a_frame_runs_inside_a_running_event_loop(tmp_path: Path, sim: SimulatorProcess) -> None:
    async def notebook_cell() -> Any:
        return run(tmp_path, sim, pa.table({"review_id": ["a"], "text": ["superb"]}))

    summary = asyncio.run(notebook_cell())
    assert summary.rows_ok == 1 and read_results(summary).height == 1


def test_run_prompt_returns_the_answers_beside_the_input(
    tmp_path: Path, sim: SimulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # its default output is out/NAME-DIGEST, here
    options: dict[str, Any] = {
        "model": "claude-haiku-4-5-20251001", "choices": CHOICES, "max_tokens": 8,
        "base_url": sim.base_url, "api_key": "sk-test-key", "show_progress": False,
    }  # fmt: skip
    labelled = run_prompt(ROWS, PROMPT, **options)
    assert labelled.height == 5 and labelled["stars"].to_list() == [5, 1, 3, 5, 1]
    assert {"review_id", "text", "label", "cost_usd", "input_tokens"} <= set(labelled.columns)
    assert run_prompt(ROWS, PROMPT, **options).equals(labelled) and sent(sim) == 5  # resumed
    other = run_prompt(ROWS, PROMPT + " Be brief.", **options)  # its own output: no refusal
    assert other.height == 5 and sent(sim) == 10
    assert len(list((tmp_path / "out").iterdir())) == 2


def test_run_prompt_says_every_keyword_in_help() -> None:
    signature = inspect.signature(run_prompt)
    assert all(p.kind is not p.VAR_KEYWORD for p in signature.parameters.values())
    assert {"model", "choices", "fields", "output", "max_cost", "simulate"} <= set(
        signature.parameters
    )


def test_a_missing_input_names_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as error:
        open_source(Path("data/reviews.csv"), None)
    message = str(error.value)
    assert str(tmp_path / "data" / "reviews.csv") in message and str(tmp_path) in message
    assert "\n" not in message
