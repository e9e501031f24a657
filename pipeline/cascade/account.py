"""What a cascade did and cost, as the run's summary and `pipeline report` show it: rows
decided at each stage, the cascade's cost against the last model alone for the same rows
(its mean cost a row, measured on the calibration rows), and the guarantee it states."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from pipeline.cascade.routing import guarantee, load_plan
from pipeline.job.model import CascadeSettings
from pipeline.store.layout import CASCADE_DIR, CASCADE_PLAN, CASCADE_RECORD, RESULTS_FILE

PREFIX = "[cascade] "


def recorded_settings(output_dir: Path) -> CascadeSettings | None:
    """The [cascade] an output's phases were made with (cascade/cascade.json)."""
    path = output_dir / CASCADE_DIR / CASCADE_RECORD
    if not path.exists():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    fields = {k[len(PREFIX) :]: v for k, v in record.items() if k.startswith(PREFIX)}
    return CascadeSettings(**{**fields, "models": tuple(fields["models"])})


def cascade_account(output_dir: Path) -> str | None:
    """The account's lines; None for an output that is not a cascade's, or before its plan."""
    settings = recorded_settings(output_dir)
    plan = load_plan(output_dir / CASCADE_DIR / CASCADE_PLAN)
    results = output_dir / RESULTS_FILE
    if settings is None or plan is None or not results.exists():
        return None
    table = pl.read_parquet(results, columns=["cascade_stage", "cost_usd"])
    rows, last = table.height, settings.models[-1]
    counts = dict(table.group_by("cascade_stage").len().iter_rows())
    lines = ["cascade: rows decided at each stage"]
    for k, model in enumerate(settings.models):
        count = counts.get(k, 0)
        note = f", {plan.rows:,} of them calibration rows" if k == len(settings.models) - 1 else ""
        lines.append(f"  stage {k} {model}: {count:,} ({count / max(rows, 1):.1%}{note})")
    spent = float(table["cost_usd"].sum() or 0.0)
    alone = plan.last_alone_cost_per_row * rows
    share = f": {spent / alone:.0%} of it" if alone else ""
    lines.append(
        f"  cost ${spent:,.4f} for {rows:,} rows, calibration included; {last} alone about "
        f"${alone:,.4f} (its mean cost a row on the {plan.rows:,} calibration rows){share}"
    )
    lines.append("  " + guarantee(plan, settings))
    return "\n".join(lines) + "\n"
