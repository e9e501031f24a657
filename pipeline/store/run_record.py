"""The run record (`OUTPUT/run.json`): the last run's summary, which status reads, and
what earlier runs' answers without usage may have cost, which the budget counts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.store.layout import RUN_RECORD
from pipeline.store.manifest import now_iso, write_json


def unknown_cost_usd(output_dir: Path) -> float:
    """What earlier runs' answers without usage may have cost (their worst case)."""
    try:
        record = json.loads((output_dir / RUN_RECORD).read_text(encoding="utf-8"))
        return float(record.get("unknown_cost_worst_usd") or 0.0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def write_run_record(
    output_dir: Path,
    summary: Mapping[str, Any],
    stopped: BaseException | None,
    gold_column: str | None = None,
    label_column: str | None = None,
    unknown_cost_usd: float = 0.0,
) -> None:
    """run.json: the last run's summary (status reads it), and where report finds the
    labels and gold labels for accuracy."""
    record = dict(summary)
    record["stopped"] = str(stopped) if stopped else None
    record["gold_column"], record["label_column"] = gold_column, label_column
    record["unknown_cost_worst_usd"] = unknown_cost_usd  # earlier runs' included
    record["ended_at"] = now_iso()
    started = datetime.now(UTC) - timedelta(seconds=float(summary["wall_s"]))
    record["started_at"] = started.isoformat(timespec="seconds")
    write_json(output_dir / RUN_RECORD, record)
