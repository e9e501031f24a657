"""Every error the pipeline raises, in one tree.

    PipelineError
    ├── UsageError              bad job file, input file or flags: exit 2, nothing sent
    │   ├── JobFileError        names the file and the key
    │   └── InputError          names the input file, column or row
    ├── CountFailed             count_tokens refused (estimate): exit 4, nothing was run
    ├── BatchApiError           the Message Batches API answered a call with an error
    │   ├── CreateUnconfirmed   a create whose answer never came: it may exist (list it)
    │   └── CreateWithoutId     a create answered 2xx without a batch id: made, but unseen
    ├── TransportError          no HTTP answer at all (translated from aiohttp / httpx)
    │   ├── ConnectFailed       could not connect, or the server dropped the connection
    │   └── RequestTimedOut     connect or read timeout
    └── JobStopped              the run stopped before every row finished
        ├── ApiRejectsEverything  401/403, or the first answers all the same 4xx: exit 4
        ├── ApiUnavailable        no success for rate_limit_patience_s (outage, 429s): exit 4
        ├── BudgetReached         max_cost_usd would be crossed: exit 3
        ├── LocalWriteError       disk full / not writable: paid answers kept, exit 6
        ├── BatchesInProgress     batch mode: batches still on the server, exit 5
        └── Interrupted           SIGINT / SIGTERM after a graceful stop: exit 130 / 143

A non-2xx HTTP answer is not an exception: the client returns it as data and the pure
functions in `retry.py` decide whether to send again. Foreign exceptions are translated
where they enter (`raise ConnectFailed(...) from e`), so callers never see aiohttp's tree.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = 1


class UsageError(PipelineError):
    """The user asked for something impossible; nothing was sent."""

    exit_code = 2


class JobFileError(UsageError):
    """A mistake in the job file: the message names the file and the key."""


class InputError(UsageError):
    """A problem with the input file: the message names the file, column or row."""


class CountFailed(PipelineError):
    """`pipeline estimate`: the API's count_tokens endpoint refused; no run was stopped."""

    exit_code = 4


class BatchApiError(PipelineError):
    """A Message Batches call answered with an error (after retries of transient ones)."""

    exit_code = 4

    def __init__(self, message: str, status: int | None = None, error_type: str = "") -> None:
        super().__init__(message)
        self.status, self.error_type = status, error_type


class CreateUnconfirmed(BatchApiError):
    """The create call got no answer (dropped, timed out, a 5xx): the batch may exist."""


class CreateWithoutId(BatchApiError):
    """The create was answered with success but no batch id: it may exist, and cannot
    be followed unless it is found in the account's list."""

    intent_number: int | None = None  # which intent of the batch book it was


class TransportError(PipelineError):
    """The request got no HTTP answer; always worth another attempt.

    `delivered`: the request may have reached the server whole (the connection dropped or
    went silent after it was sent), so it may have been billed. False only where it surely
    never left (no connection was made): when in doubt, it may have."""

    def __init__(self, message: str = "", *, delivered: bool = True) -> None:
        super().__init__(message)
        self.delivered = delivered


class ConnectFailed(TransportError):
    """Connecting failed or the connection was dropped before the answer was complete."""


class RequestTimedOut(TransportError):
    """The connect or read timeout expired."""


class JobStopped(PipelineError):
    """The run stopped early; what finished is kept and a resume continues."""

    summary: object = None  # the stopped run's RunSummary, attached by the runner


class ApiRejectsEverything(JobStopped):
    """Authentication / permission failed, or the API rejects every request the same way."""

    exit_code = 4


class ApiUnavailable(JobStopped):
    """No attempt of any row succeeded for the patience: the rows not finished stay to do."""

    exit_code = 4


class BudgetReached(JobStopped):
    """The next request could cost more than max_cost_usd allows."""

    exit_code = 3


class LocalWriteError(JobStopped):
    """The output directory could not be written (disk full, permission, read-only)."""

    exit_code = 6


class BatchesInProgress(JobStopped):
    """Batches are still in progress on the server: run again to collect them."""

    exit_code = 5


class Interrupted(JobStopped):
    """SIGINT or SIGTERM: in-flight rows were finished and kept."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number


def first_line(error: BaseException) -> str:
    """A foreign error's message for a one-line error of ours (its class when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__
