"""Progress on stderr (a tqdm bar when stderr is a terminal) and the run's summary."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline.schema import TOKEN_TOTALS
from pipeline.store.unrecorded import unseen_line


class _Client(Protocol):
    retries: Counter[str]


class _Limiter(Protocol):
    cooldowns: int
    adjustments: list[str]


@dataclass
class RunSummary:
    job: str
    output_dir: str
    results: str | None
    rows_total: int
    rows_ok: int
    rows_error: int
    rows_before: int  # finished by earlier runs of this job
    rows_remaining: int
    requests: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    cost_usd: float
    unpriced_rows: int
    wall_s: float
    retries: dict[str, int] = field(default_factory=dict)
    cooldowns: int = 0
    adjustments: list[str] = field(default_factory=list)  # limits learned, rate lowered, ...
    stopped: str | None = None
    rows_invalid: int = 0  # of rows_ok: answered, but the answer held no valid label
    # attempts sent whole whose answer never came (dropped, silent): maybe billed, unseen
    unseen_requests: int = 0
    unseen_worst_usd: float = 0.0
    # attempts in flight when the run stopped and never finished (cancelled at the end)
    unrecorded_requests: int = 0
    unrecorded_worst_usd: float = 0.0

    @property
    def complete(self) -> bool:
        return self.rows_remaining == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}

    def line(self) -> str:
        rate = (self.rows_ok + self.rows_error) / self.wall_s if self.wall_s > 0 else 0.0
        parts = [
            f"{self.job}: {self.rows_ok:,} ok{invalid_labels(self.rows_invalid)}, "
            f"{self.rows_error:,} error",
            f"{self.rows_before:,} from earlier runs" if self.rows_before else None,
            f"{self.rows_remaining:,} not done" if self.rows_remaining else None,
        ]
        text = ", ".join(p for p in parts if p)
        text += (
            f" | tokens {self.input_tokens:,} in, {self.output_tokens:,} out, "
            f"{self.cache_read_input_tokens:,} cache read, "
            f"{self.cache_creation_input_tokens:,} cache write"
            f" | cost ${self.cost_usd:,.4f}"
            f" | {self.wall_s:,.1f} s, {rate:,.1f} rows/s, {self.requests:,} requests"
        )
        if self.unpriced_rows:
            text += f" | {self.unpriced_rows:,} rows unpriced"
        if self.retries:
            text += " | retried: " + ", ".join(f"{k} x{v}" for k, v in self.retries.items())
        if self.cooldowns:
            text += f" | {self.cooldowns} rate-limit cooldowns"
        for adjustment in self.adjustments[-6:]:
            text += f"\n  pacing {adjustment}"
        return text + self._maybe_billed()

    def _maybe_billed(self) -> str:
        """Money the cost above may leave out: said, never silently short."""
        text = ""
        if self.unseen_requests:
            line = unseen_line(self.unseen_requests, self.unseen_worst_usd)
            text += f"\n  {line} (counted in the budget)"
        if self.unrecorded_requests:
            text += (
                f"\n  {self.unrecorded_requests:,} requests were in flight and unrecorded when "
                f"the run stopped (they may have been billed, up to "
                f"${self.unrecorded_worst_usd:,.4f} at their worst case)"
            )
        return text


def invalid_labels(count: int) -> str:
    """What follows an `ok` count whose answers include invalid labels: they were paid
    for and answered, yet hold no usable label, which a bare "ok" would hide."""
    if not count:
        return ""
    return f" ({count:,} with an invalid label)"


def _terminal_size() -> tuple[int, int] | None:
    """(columns, lines) of the terminal on stderr; None when it reports none (a bare pty).

    tqdm hides every bar below the terminal's last line, so a pty that reports 0 lines would
    show no bar at all: then a fixed size is used instead.
    """
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return None
    return (size.columns, size.lines) if size.columns and size.lines else None


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (whose stderr is no terminal, yet shows a bar)."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


class HiddenBar:
    """A progress bar's calls, for a run that shows none: tqdm, which costs a run's start
    ~30 ms to import and starts a monitor thread, is then never loaded."""

    def update(self, n: float = 1) -> None:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None

    def close(self) -> None:
        return None


def _bar(total: int, done_before: int, *, notebook: bool) -> Any:
    """The tqdm bar on stderr (a notebook's widget where there is one)."""
    from tqdm import tqdm
    from tqdm.auto import tqdm as auto_tqdm

    size = _terminal_size()
    bar = auto_tqdm if notebook else tqdm
    return bar(
        total=total,
        initial=done_before,
        file=sys.stderr,
        unit="row",
        smoothing=0.05,
        dynamic_ncols=size is not None,
        ncols=None if size else 100,
        nrows=None if size else 24,
    )


class Progress:
    def __init__(
        self, total: int, done_before: int, to_do: int, *, show: bool | None = None
    ) -> None:
        notebook = in_notebook()
        self.show = (sys.stderr.isatty() or notebook) if show is None else show
        self.total, self.done_before, self.to_do = total, done_before, to_do
        self.bar = _bar(total, done_before, notebook=notebook) if self.show else HiddenBar()
        self.tally: Counter[str] = Counter()
        self.cost = 0.0
        self.requests = 0
        self.started = time.monotonic()
        self._shown_at = 0.0

    def requests_sent(self, count: int) -> None:
        self.requests += count

    def row_done(self, record: dict[str, Any]) -> None:
        tally = self.tally
        tally[record["status"]] += 1
        if record["status"] == "ok" and record.get("label_status") == "invalid":
            tally["invalid"] += 1
        for name in TOKEN_TOTALS:
            tally[name] += record.get(name) or 0
        cost = record.get("cost_usd")
        if cost is None:
            tally["unpriced"] += 1
        else:
            self.cost += cost
        if self.show:
            self.bar.update(1)
            now = time.monotonic()
            if now - self._shown_at >= 0.5:
                self._shown_at = now
                self.bar.set_postfix_str(self._postfix(now), refresh=False)

    def _postfix(self, now: float) -> str:
        minutes = max(now - self.started, 1e-9) / 60.0
        tally = self.tally
        return (
            f"ok={tally['ok']:,} err={tally['error']:,} "
            f"{self.requests / minutes:,.0f} req/min ${self.cost:,.4f}"
        )

    def note(self, message: str) -> None:
        if not self.show:  # what tqdm.write does with no bar to keep clear of
            print(message, file=sys.stderr)
            return
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)

    def close(self) -> None:
        if self.show:
            self.bar.set_postfix_str(self._postfix(time.monotonic()), refresh=True)
        self.bar.close()

    def summary(
        self,
        job: Any,
        results: Path | None,
        wall_s: float,
        client: _Client,
        limiter: _Limiter,
        *,
        input_rows: int,
        done_before: int,
    ) -> RunSummary:
        """The run's summary; `rows_total` / `rows_remaining` are of the whole job (the
        input), whatever part of it this run was asked to do (--limit, a pilot)."""
        tally = self.tally
        finished = tally["ok"] + tally["error"]
        return RunSummary(
            job=job.name,
            output_dir=str(job.output),
            results=str(results) if results else None,
            rows_total=input_rows,
            rows_ok=tally["ok"],
            rows_error=tally["error"],
            rows_invalid=tally["invalid"],
            rows_before=done_before,
            rows_remaining=input_rows - done_before - finished,
            requests=self.requests,
            input_tokens=tally["input_tokens"],
            output_tokens=tally["output_tokens"],
            cache_creation_input_tokens=tally["cache_creation_input_tokens"],
            cache_read_input_tokens=tally["cache_read_input_tokens"],
            cost_usd=self.cost,
            unpriced_rows=tally["unpriced"],
            wall_s=wall_s,
            retries=dict(client.retries),
            cooldowns=limiter.cooldowns,
            adjustments=list(limiter.adjustments),
        )
