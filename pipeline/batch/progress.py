"""What a waiting batch run shows: a tqdm bar of the server's counts (when stderr is a
terminal) and one line for each thing that happens to a batch (always)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from tqdm import tqdm

from pipeline.batch.http import unix_time
from pipeline.errors import BatchesInProgress
from pipeline.store.book import Entry

EXPECTED_WAIT = "most batches end within 1 hour; at most 24 h"


def _left(seconds: float) -> str:
    seconds = max(0.0, seconds)
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m"


class BatchProgress:
    def __init__(self, *, show: bool | None = None, now: Callable[[], float] = time.time) -> None:
        """`now`: UNIX time (the batch run's clock), for the time left to an expiry."""
        self.show = sys.stderr.isatty() if show is None else show
        self.bar = tqdm(
            total=0, file=sys.stderr, unit="row", disable=not self.show, dynamic_ncols=True
        )
        self.now = now

    def note(self, message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    def show_batches(self, entries: Sequence[Entry]) -> None:
        """The bar: rows the server finished of those in the batches this run waits on."""
        if not self.show:
            return
        counts = {"succeeded": 0, "errored": 0, "expired": 0, "canceled": 0, "processing": 0}
        expires: list[float] = []
        for entry in entries:
            status = entry.status
            if status is None:
                continue
            for key in counts:
                counts[key] += status.counts.get(key, 0)
            if not entry.settled and (at := unix_time(status.expires_at)) is not None:
                expires.append(at)
        total = sum(counts.values())
        self.bar.total = total
        self.bar.n = total - counts["processing"]
        ended = sum(1 for e in entries if e.status and e.status.state in ("ended", "collected"))
        postfix = (
            f"ok={counts['succeeded']:,} err={counts['errored'] + counts['expired']:,} "
            f"processing={counts['processing']:,} | batches ended {ended}/{len(entries)}"
        )
        if expires:
            postfix += f" | expires in {_left(min(expires) - self.now())}"
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def in_progress(pending: Sequence[Entry]) -> BatchesInProgress:
    """The end of a run that leaves batches running (--detach, or a batch still going)."""
    ids = ", ".join(e.batch_id or f"#{e.intent.number}" for e in pending[:5])
    more = f" and {len(pending) - 5} more" if len(pending) > 5 else ""
    return BatchesInProgress(
        f"{len(pending)} batch(es) still in progress on the server ({ids}{more}); "
        f"run the same command to collect them ({EXPECTED_WAIT})"
    )
