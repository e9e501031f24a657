"""The estimate's `in batches` line: rows in batches sent and not yet collected are bought
already, not to send; the line gives their count and what they cost at batch prices, on the
estimate's own basis (its input token count, its prices, 0 to max_tokens output), so it
compares with the `cost batch` line. The budget's stored worst case (2 bytes a token, the
highest price) stays the budget's: it is not what those rows cost."""

from __future__ import annotations

from pipeline.job.model import Job
from pipeline.pricing import BATCH_DISCOUNT
from pipeline.reports.estimate_totals import Totals
from pipeline.store.book import Uncollected


def batch_lines(job: Job, sent: Uncollected, bought: Totals) -> list[str]:
    """One line for the rows in `sent`, `bought` their totals as the estimate counts them."""
    if not sent.rows:
        return []
    rows, count = len(sent.rows), sent.batches
    unpriced = f" ({', '.join(sorted(bought.unpriced))} unpriced)" if bought.unpriced else ""
    return [
        f"in batches     {rows:,} row{'s' if rows != 1 else ''} in {count:,} "
        f"batch{'es' if count != 1 else ''} not yet collected (not in the costs below): "
        f"{bought.cost_text(BATCH_DISCOUNT)} at batch prices{unpriced}; "
        f"`pipeline run {job.source_file or 'JOB.toml'} --batch` collects them"
    ]
