"""What a waiting batch run shows: a tqdm bar of the server's counts and the time to the
batches' expiry (when stderr is a terminal; on a log file a line every few minutes), and
one line for each thing that happens to a batch (always)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

from tqdm import tqdm

from pipeline.batch.http import unix_time
from pipeline.errors import BatchesInProgress
from pipeline.store.book import Entry

EXPECTED_WAIT = "most batches end within 1 hour; at most 24 h"


# The bar counts requests the server has ended of those in the batches; no rate and no
# time to go: a batch's requests end in bursts whenever the server gets to them, so a
# rows-a-second estimate says nothing. What bounds the wait is the batches' expiry.
BAR_FORMAT = "{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} requests ended [{elapsed}{postfix}]"
LOG_EVERY_S = 300.0  # stderr not a terminal (a log file): a counts line this often at most
COUNTED = ("succeeded", "errored", "expired", "canceled", "processing")


def _left(seconds: float) -> str:
    seconds = max(0.0, seconds)
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m"


class BatchProgress:
    def __init__(self, *, show: bool | None = None, now: Callable[[], float] = time.time) -> None:
        """`now`: UNIX time (the batch run's clock), for the time left to an expiry.
        `show`: the bar (None: when stderr is a terminal); not shown and not turned off
        (None on a log file), a plain counts line every LOG_EVERY_S instead."""
        terminal = sys.stderr.isatty()
        self.show = terminal if show is None else show
        self.log = show is None and not terminal
        self.bar = tqdm(
            total=0, file=sys.stderr, disable=not self.show, dynamic_ncols=True,
            bar_format=BAR_FORMAT,
        )  # fmt: skip
        self.now = now
        self.logged_at: float | None = None  # the first line after LOG_EVERY_S of waiting

    def note(self, message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    def show_batches(self, entries: Sequence[Entry]) -> None:
        """The server's counts of the batches this run waits on: the bar, or a line."""
        if not (self.show or self.log):
            return
        counts, total = summed_counts(entries)
        line = counts_line(entries, counts, self.now())
        if self.show:
            self.bar.total = total
            self.bar.n = total - counts["processing"]
            self.bar.set_postfix_str(line, refresh=False)
            self.bar.refresh()
            return
        if self.logged_at is None:
            self.logged_at = self.now()
        elif self.now() - self.logged_at >= LOG_EVERY_S:
            self.logged_at = self.now()
            self.note(f"waiting on batches: {line}")

    def close(self) -> None:
        self.bar.close()


def summed_counts(entries: Sequence[Entry]) -> tuple[dict[str, int], int]:
    """The request_counts of every batch, summed by kind, and their total."""
    counts = dict.fromkeys(COUNTED, 0)
    for entry in entries:
        if entry.status is not None:
            for key in counts:
                counts[key] += entry.status.counts.get(key, 0)
    return counts, sum(counts.values())


def counts_line(entries: Sequence[Entry], counts: dict[str, int], now: float) -> str:
    """`succeeded 9,000, errored 12, processing 991 | batches ended 1/2 | expire in 23h41m`:
    errored counts expired ones too (both go into a later batch); the expiry is the
    soonest of a batch not yet collected (past it the server ends its rows expired)."""
    ended = sum(1 for e in entries if e.status and e.status.state in ("ended", "collected"))
    line = (
        f"succeeded {counts['succeeded']:,}, errored {counts['errored'] + counts['expired']:,}, "
        f"processing {counts['processing']:,}"
        + (f", canceled {counts['canceled']:,}" if counts["canceled"] else "")
        + f" | batches ended {ended}/{len(entries)}"
    )
    expires = [
        at
        for e in entries
        if e.status is not None and not e.settled and (at := unix_time(e.status.expires_at))
    ]
    if expires:
        line += f" | expire in {_left(min(expires) - now)}"
    return line


def in_progress(pending: Sequence[Entry]) -> BatchesInProgress:
    """The end of a run that leaves batches running (--detach, or a batch still going)."""
    ids = ", ".join(e.batch_id or f"#{e.intent.number}" for e in pending[:5])
    more = f" and {len(pending) - 5} more" if len(pending) > 5 else ""
    return BatchesInProgress(
        f"{len(pending)} batch(es) still in progress on the server ({ids}{more}); "
        f"run the same command to collect them ({EXPECTED_WAIT})"
    )
