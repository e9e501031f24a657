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
    │   ├── RequestTimedOut     connect or read timeout
    │   └── AnswerTooLarge      longer than max_answer_bytes (the client: a malformed answer)
    └── JobStopped              the run stopped before every row finished
        ├── ApiRejectsEverything  401/403, or the first answers all the same 4xx: exit 4
        ├── ApiUnavailable        no success for rate_limit_patience_s (outage, 429s): exit 4
        ├── BudgetReached         max_cost_usd would be crossed: exit 3
        ├── LocalWriteError       disk full / not writable: paid answers kept, exit 6
        ├── OutputUnreachable     an output URL refused its last put: answers in the mirror, 6
        ├── BatchesInProgress     batch mode: batches still on the server, exit 5
        ├── ClusterLost           --ray: the cluster lost the pacing actor: exit 4
        ├── WorkerLost            --ray: a shard's workers kept dying: exit 4
        ├── PhaseUnfinished       a cascade phase --retry-errors left unfinished: exit 2
        └── Interrupted           SIGINT / SIGTERM after a graceful stop: exit 130 / 143

Signals that are not PipelineErrors: each is caught inside the package, by the code that
called what raised it, and becomes an error row, a retry or a PipelineError there.

    ValueError
    ├── MalformedAnswer         a 2xx body that is not an answer of its format: error row
    ├── TemplateError           a template's text is malformed (job.load: JobFileError)
    └── Invalid                 a job file value failed its check (job.load: JobFileError)
    Unsendable                  a row that cannot become a request: error row, never sent
    ├── MissingValue            a column the templates use is null in the row
    ├── InvalidValue            a per-row override cell that is not a value of its field
    └── EmptyPrompt             the prompt renders empty or whitespace only
    StreamBroken                an `error` event in a 200 stream: retried as its status
    NotSent                     the run is stopping: an attempt not yet sent never will be
    ApiError                    the simulator's handlers: an error answer it sends as HTTP
    RuntimeError
    └── SimulatorStartError     the simulator process did not come up

A `--ray` worker's error crosses to the driver as (class name, one line, exit code):
`from_worker` makes it its own class again there. Built-in exceptions are raised only for a
caller's misuse (the simulator's config checks, a simulator started twice), never for what
a job, its input or the API did.

A non-2xx HTTP answer is not an exception: the client returns it as data and the pure
functions in `retry.py` decide whether to send again. Foreign exceptions are translated
where they enter (`raise ConnectFailed(...) from e`), so callers never see aiohttp's tree.
"""

from __future__ import annotations

import sys


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


class AnswerTooLarge(TransportError):
    """The answer is longer than max_answer_bytes; what was read of it is dropped. A
    TransportError (no usable answer came) to any caller that does not tell it apart; the
    ApiClient makes it a malformed answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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


class OutputUnreachable(JobStopped):
    """An output at a URL could not be put to at the run's end: its answers are kept in
    the local mirror, and the next run puts them."""

    exit_code = 6


class BatchesInProgress(JobStopped):
    """Batches are still in progress on the server: run again to collect them."""

    exit_code = 5


class ClusterLost(JobStopped):
    """The cluster itself failed under the run: finished rows are kept; resume."""

    exit_code = 4


class WorkerLost(JobStopped):
    """A shard's workers kept dying: the run stops as if the cluster were lost."""

    exit_code = 4


class PhaseUnfinished(JobStopped):
    """A cascade phase has requests never sent and --retry-errors sends only failed ones:
    the later phases, which follow from its answers, wait for a run without the flag (a
    usage stop; its retried requests are kept)."""

    exit_code = 2


class Interrupted(JobStopped):
    """SIGINT or SIGTERM: in-flight rows were finished and kept."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number


# -- not PipelineErrors: caught inside the package (see the tree above) --


class MalformedAnswer(ValueError):
    """A 2xx body that is not an answer of its format (e.g. a proxy's HTML page)."""


class TemplateError(ValueError):
    """The template text itself is malformed."""


class Invalid(ValueError):
    """A value failed its check; the message says what was expected.

    `subkey` names the field inside a table value (thinking.budget_tokens).
    """

    def __init__(self, message: str, subkey: str | None = None) -> None:
        super().__init__(message)
        self.subkey = subkey


class Unsendable(Exception):
    """This row cannot become a request: an error row, never sent, costing nothing."""

    error_type = "unsendable"


class MissingValue(Unsendable):
    """A column the templates use is null in this row."""

    error_type = "missing_value"

    def __init__(self, column: str) -> None:
        super().__init__(f"column {column!r} is empty in this row")
        self.column = column


class InvalidValue(Unsendable):
    """A per-row override cell that is not a value of its field (max_tokens = "abc")."""

    error_type = "invalid_value"


class EmptyPrompt(Unsendable):
    """The prompt renders empty or whitespace only: the API refuses such a message, and
    filling it in would alter what the user wrote."""

    error_type = "empty_prompt"


class StreamBroken(Exception):
    """An `error` event in a streamed answer (it can arrive after HTTP 200)."""

    def __init__(self, status: int | None, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message


class NotSent(Exception):
    """The run is stopping: an attempt that had not been sent yet never will be."""


class ApiError(Exception):
    """The simulator's error answer. `gateway` selects the gateway's `{"error": {type, code,
    ...}}` shape; `rate_limit_headers=False` leaves out every rate-limit header (answers
    that come from the gateway's front door, not from the rate limiter: the concurrency
    cap, the outage). Without `error_type`, the type the API names for the status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        code: str | None = None,
        gateway: bool = False,
        retry_after: str | None = None,
        rate_limit_headers: bool = True,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or error_type_for(status)
        self.code = code
        self.gateway = gateway
        self.retry_after = retry_after
        self.rate_limit_headers = rate_limit_headers


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",  # the provider documents no 503; api_error is its type for any 5xx
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for(status: int) -> str:
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


class SimulatorStartError(RuntimeError):
    """The simulator did not come up; the message carries the end of its stderr."""


def from_worker(name: str, message: str, code: int) -> PipelineError:
    """A `--ray` worker's error on the driver, as its own class: it crossed as its class
    name, its one line and its exit code. A name that is no stop or usage error of this
    tree comes back a PipelineError with the same line and code."""
    cls = getattr(sys.modules[__name__], name, None)
    error: PipelineError
    if cls is Interrupted:
        error = Interrupted(message, code - 128)
    elif isinstance(cls, type) and issubclass(cls, (JobStopped, UsageError)):
        error = cls(message)
    else:
        error = PipelineError(message)
    error.exit_code = code
    return error


def first_line(error: BaseException) -> str:
    """A foreign error's message for a one-line error of ours (its class when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__
