"""Two models on the same sample of the sample job, through the simulator, compared: the
stronger model's profile makes it the more accurate one, and `pipeline compare` says so.

Also: what `estimate --sample` prices is what the run sends, and the simulator's labels do
not depend on the gold column (it only sees the requests).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.e2e import REPO, run_in_process, write_job

WEAK, STRONG = "claude-3-haiku-20240307", "claude-opus-4-6"
SAMPLE = ("--sample", "150", "--seed", "0")
FAST = ("--rpm", "30000", "--concurrency", "32", "--no-progress")
ROTATED = {"positive": "negative", "negative": "neutral", "neutral": "positive"}


def sample_job(directory: Path, model: str, reviews: Path | None = None) -> Path:
    """jobs/label_reviews.toml with `model`, named after it, writing under `directory`."""
    directory.mkdir()
    sections: dict[str, dict[str, Any]] = tomllib.loads(
        (REPO / "jobs" / "label_reviews.toml").read_text(encoding="utf-8")
    )
    sections["job"] |= {
        "name": model,
        "input": str(reviews or REPO / "sample_data" / "reviews.csv"),
        "output": str(directory / f"out-{model}"),  # compare's verdict names this directory
    }
    sections["request"]["model"] = model
    return write_job(directory, sections)


def run_sample(capsys: Any, job: Path) -> pl.DataFrame:
    done = run_in_process(capsys, "run", str(job), "--simulate", *SAMPLE, *FAST)
    assert done.returncode == 0, done.stderr
    assert "150 ok, 0 error" in done.stderr
    return pl.read_parquet(results_of(job))


def results_of(job: Path) -> Path:
    return next(job.parent.glob("out-*")) / "results.parquet"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The job files of the two models (each run once, by the first test that needs it)."""
    root = tmp_path_factory.mktemp("compare")
    return {model: sample_job(root / model, model) for model in (WEAK, STRONG)}


def test_the_stronger_model_is_more_accurate_and_compare_says_so(capsys, runs) -> None:
    weak, strong = (run_sample(capsys, runs[model]) for model in (WEAK, STRONG))
    assert weak["review_id"].sort().to_list() == strong["review_id"].sort().to_list()
    outputs = [str(results_of(runs[model]).parent) for model in (WEAK, STRONG)]
    shown = run_in_process(capsys, "compare", *outputs, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    comparison = json.loads(shown.stdout)
    assert comparison["rows"] == 150
    weak_figures, strong_figures = comparison["outputs"]
    assert strong_figures["models"] == [STRONG] and weak_figures["models"] == [WEAK]
    assert strong_figures["accuracy"] > weak_figures["accuracy"] + 0.1
    assert strong_figures["accuracy"] > 0.7  # Opus is right on most rows
    (pair,) = comparison["pairs"]
    assert pair["only_b_right"] > pair["only_a_right"]
    assert pair["p_value"] < 0.05
    assert pair["verdict"].startswith(f"out-{STRONG} is more accurate than out-{WEAK} by ")


def test_estimate_of_the_sample_is_what_the_run_sends(capsys, runs) -> None:
    job = runs[STRONG]
    done = list(job.parent.glob("out-*"))
    sent = pl.read_parquet(results_of(job)) if done else run_sample(capsys, job)
    fresh = str(job.parent / "not_run")  # nothing done there: every sampled row to send
    estimate = run_in_process(capsys, "estimate", str(job), *SAMPLE, "--output", fresh)
    assert estimate.returncode == 0, estimate.stderr
    assert "150 to send" in estimate.stdout
    tokens = re.search(r"input tokens\s+([\d,]+)", estimate.stdout)
    assert tokens is not None, estimate.stdout
    assert int(tokens[1].replace(",", "")) == sent["input_tokens"].sum()


def test_labels_do_not_depend_on_the_gold_column(capsys, runs, tmp_path) -> None:
    """The same reviews with every gold label changed: each row's label is the same."""
    job = runs[WEAK]
    done = list(job.parent.glob("out-*"))
    first = pl.read_parquet(results_of(job)) if done else run_sample(capsys, job)
    reviews = pl.read_csv(REPO / "sample_data" / "reviews.csv")
    rotated = reviews.with_columns(pl.col("gold_label").replace_strict(ROTATED))
    rotated.write_csv(tmp_path / "rotated.csv")
    second = run_sample(capsys, sample_job(tmp_path / "rotated", WEAK, tmp_path / "rotated.csv"))
    both = first.join(second, on="review_id", suffix="_rotated")
    assert both.height >= 30  # the sample is stratified by gold: a different one, overlapping
    assert (both["gold_label"] != both["gold_label_rotated"]).all()
    assert both["label"].to_list() == both["label_rotated"].to_list()
