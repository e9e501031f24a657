"""The sample job's accuracy against its gold labels, end to end, equals what the
simulator's deterministic answer (its word-list verdict, as the job's model degrades it)
gives when applied to the same prompts directly."""

from __future__ import annotations

import re

import polars as pl

from pipeline.simulator.answers import guess_label
from tests.e2e import REPO
from tests.simulator_helpers import simulated_label

SAMPLE_MODEL = "claude-haiku-4-5-20251001"  # jobs/label_reviews.toml's

PROMPT = "Review of {product}: {text}\nAnswer with one word: positive, negative or neutral."


def test_sample_job_accuracy_against_gold_labels(tmp_path, cli):
    done = cli(
        "run",
        "jobs/label_reviews.toml",
        "--simulate",
        "--rpm",
        "30000",
        "--concurrency",
        "32",
        "--output",
        str(tmp_path / "out"),
    )
    assert done.returncode == 0, done.stderr
    report = cli("report", str(tmp_path / "out"), "--by", "label")
    assert report.returncode == 0, report.stderr
    reviews = pl.read_csv(REPO / "sample_data" / "reviews.csv")
    prompts = [PROMPT.format(**row) for row in reviews.iter_rows(named=True)]
    expected = [simulated_label(SAMPLE_MODEL, prompt) for prompt in prompts]
    verdicts = [guess_label(prompt, ["positive", "negative", "neutral"], 0) for prompt in prompts]
    correct = sum(e == g for e, g in zip(expected, reviews["gold_label"], strict=True))
    verdicts_correct = sum(v == g for v, g in zip(verdicts, reviews["gold_label"], strict=True))
    shown = re.search(r"Accuracy against gold_label: ([\d.]+)% \(([\d,]+) of 320", report.stdout)
    assert shown is not None, report.stdout
    assert int(shown[2].replace(",", "")) == correct
    assert float(shown[1]) == round(100 * correct / 320, 1)
    assert 0.7 < verdicts_correct / 320 < 0.95  # a plausible classifier, not a perfect one
    assert 0.6 < correct / 320 < verdicts_correct / 320  # Haiku 4.5 is right on less of it
    confusion = report.stdout.split("Confusion")[1].split("Per class")[0]
    counts = [int(n) for line in confusion.splitlines()[3:] for n in line.split()[1:]]
    assert sum(counts) == 320
    out = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert out["label"].to_list() == expected  # every row's label is its own
