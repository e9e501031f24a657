"""`pipeline cancel OUTPUT`: cancel the job's batches in progress on the server.

Only the server is told; the book is left to the runs (one may be waiting on these very
batches right now): a run sees them end, collects the rows they finished, and keeps the
canceled rows to do without sending them again itself (cancel stays done); a later
`pipeline run` sends them. Exit 0 when at least one batch in progress was canceled, 4 when
the API refused one, 2 when there was nothing in progress to cancel.

The output directory is not trusted with the key: the key is read from $AISA_API_KEY (or
$ANTHROPIC_API_KEY, or the variable --api-key-env names), never from a variable a record
names, and it goes only to the default API host or the one --base-url names explicitly.
A batch adopted from the account's list and not yet confirmed as this job's is left alone:
it may be someone else's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.batch.http import BatchApi
from pipeline.errors import BatchApiError, UsageError
from pipeline.job.model import ApiSettings
from pipeline.providers import anthropic
from pipeline.run.plan import api_key_from_env
from pipeline.store.book import ENDED, BatchBook, Intent


def trusted_hosts(base_url: str | None) -> set[str]:
    """Where the key may go: the default API host, and the one --base-url names."""
    return {u.rstrip("/") for u in (ApiSettings.base_url, base_url) if u}


def batches_api(intent: Intent, api_key_env: str | None, **options: Any) -> BatchApi:
    """The Batches API at the host `intent` was made on, authenticated as its run was
    (bearer or x-api-key), the key from the environment (see the module's docstring).
    `options`: BatchApi's (max_retries, timeout_s)."""
    key = api_key_from_env(api_key_env or ApiSettings.api_key_env)
    auth = intent.auth if intent.auth in ("bearer", "x-api-key") else "bearer"
    # the Message Batches API is the Messages API's: its headers, whatever the job's format
    headers = anthropic.request_headers(auth, key, intent.anthropic_version)
    return BatchApi(intent.base_url, headers, secret=key, **options)


async def cancel_batches(
    output_dir: Path, base_url: str | None = None, api_key_env: str | None = None
) -> tuple[str, int, int]:
    """Cancel every batch of `output_dir` not yet ended: a line for each, how many were
    canceled and how many the API refused to cancel."""
    if not output_dir.is_dir():
        raise UsageError(f"{output_dir}: no such output directory")
    book = BatchBook(output_dir)
    if not book.entries:
        raise UsageError(f"{output_dir}: this output has no batches (batch mode never ran here)")
    lines, canceled, refused = [], 0, 0
    for entry in book.pending():
        intent, status = entry.intent, entry.status
        if status is None or status.batch_id is None:
            lines.append(f"#{intent.number}: create not confirmed; the next run looks for it")
            continue
        if status.state == ENDED:
            lines.append(f"{status.batch_id}: already ended; the next run collects it")
            continue
        if intent.simulated:
            lines.append(f"{status.batch_id}: was on a --simulate run's simulator, gone with it")
            continue
        if status.adopted:
            lines.append(
                f"{status.batch_id}: adopted by listing, not yet confirmed as this job's: "
                "left alone"
            )
            continue
        if intent.base_url.rstrip("/") not in trusted_hosts(base_url):
            lines.append(
                f"{status.batch_id}: made on {intent.base_url}; to cancel it there, run "
                f"`pipeline cancel {output_dir} --base-url {intent.base_url}`"
            )
            continue
        api = batches_api(intent, api_key_env)
        try:
            batch = await api.cancel(status.batch_id)
        except BatchApiError as e:
            lines.append(f"{status.batch_id}: not canceled: {e}")
            refused += 1
            continue
        finally:
            await api.aclose()
        lines.append(f"{status.batch_id}: {batch.get('processing_status', '?')}")
        canceled += 1
    if not lines:
        lines.append("no batch in progress: nothing to cancel")
    if canceled:
        lines.append(
            "run the job again to collect what the batches finished; a run waiting on them "
            "now stops without sending the canceled rows: a later run sends the canceled "
            "rows again"
        )
    return "\n".join(lines) + "\n", canceled, refused
