"""`pipeline status OUTPUT [--format json] [--refresh]`: reports/status.py reads the output;
with --refresh the batches not yet collected are asked about first (batch/refresh.py)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from pipeline.batch.refresh import refresh
from pipeline.reports.status import status_data, status_text
from pipeline.reports.tables import exact_json
from pipeline.store.book import Status
from pipeline.store.layout import CASCADE_DIR


def status_output(
    output_dir: Path,
    fmt: str = "text",
    *,
    ask_api: bool = False,
    base_url: str | None = None,
    api_key_env: str | None = None,
) -> str:
    """What `pipeline status` prints; a batch that could not be asked is said on stderr
    (text) or under `not_refreshed` (json), and shown as last seen."""
    fresh: dict[str, Status] | None = None
    unasked: list[str] = []
    if ask_api:
        fresh, unasked = asyncio.run(refresh(books(output_dir), base_url, api_key_env))
    data = status_data(output_dir, fresh)
    if fmt == "json":
        return exact_json({**data, **({"not_refreshed": unasked} if ask_api else {})})
    for line in unasked:
        print(f"refresh: {line}", file=sys.stderr)
    return status_text(data)


def books(output_dir: Path) -> list[Path]:
    """Every directory of the output that keeps a batch book: its own, and a cascade's
    phases."""
    phases = (output_dir / CASCADE_DIR).glob("*-*")
    return [output_dir, *sorted(p for p in phases if p.is_dir())]
