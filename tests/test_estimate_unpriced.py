"""`pipeline estimate` for a model missing from the price table says the cost is unknown,
never "$0.0000 .. $0.0000"; a job mixing priced and unpriced models says which part is
known."""

from __future__ import annotations

from decimal import Decimal

import polars as pl

from pipeline.job.load import load_job
from pipeline.reports.estimate import Totals, estimate
from tests.e2e import label_job

UNKNOWN = "gw-house-model-9"  # in no price table


def unpriced_job(tmp_path, **sections):
    texts = [f"review {i}: fine" for i in range(12)]
    pl.DataFrame({"id": [f"r{i}" for i in range(12)], "text": texts}).write_csv(tmp_path / "in.csv")
    return label_job(tmp_path, tmp_path / "in.csv", request={"model": UNKNOWN}, **sections)


def line(text: str, start: str) -> str:
    return next(x for x in text.splitlines() if x.startswith(start))


def test_estimate_of_an_unpriced_model_says_unknown(tmp_path):
    text = estimate(load_job(unpriced_job(tmp_path)), pilot=0, simulate=False, base_url=None)
    assert line(text, "cost online") == "cost online    unknown"
    assert line(text, "cost batch").startswith("cost batch     unknown")
    assert "$0.0000" not in text
    assert UNKNOWN in line(text, "unpriced") and "[pricing]" in line(text, "unpriced")


def test_a_pilot_of_an_unpriced_model_says_unknown_too(tmp_path, sim, cli):
    job = unpriced_job(tmp_path)
    done = cli("estimate", str(job), "--pilot", "3", "--base-url", sim.base_url)
    assert done.returncode == 0, done.stderr
    assert line(done.stdout, "cost online") == "cost online    unknown"
    assert "cost unknown" in line(done.stdout, "pilot")
    assert line(done.stdout, "projected cost").startswith("projected cost unknown")
    assert "$0.0000" not in done.stdout


def test_priced_and_unpriced_rows_show_the_known_part_and_the_unknown_rows():
    totals = Totals(rows=10, cost_min=Decimal("0.5"), cost_max=Decimal("1.25"))
    totals.rows_by_model = {"claude-haiku-4-5": 7, UNKNOWN: 3}
    totals.unpriced = {UNKNOWN}
    assert totals.cost_text() == "$0.5000 .. $1.2500 + unknown (3 rows of unpriced models)"
    assert totals.cost_text(Decimal("0.5")).startswith("$0.2500 .. $0.6250 + unknown")
    totals.unpriced = set()
    assert totals.cost_text() == "$0.5000 .. $1.2500"
