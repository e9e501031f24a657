"""`pipeline status OUTPUT --refresh`: each batch not yet collected as the API sees it
now, instead of as a run last saw it. Read only: nothing is written to the output (a run
may be waiting on these batches right now, and its book is its own).

The key is trusted as `pipeline cancel` trusts it (batch/cancel.py): read from
$AISA_API_KEY, $ANTHROPIC_API_KEY or the variable --api-key-env names, never from a
variable an output's record names, and sent only to the default API host or the one
--base-url names.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pipeline.batch.cancel import batches_api, trusted_hosts
from pipeline.batch.submit import status_of
from pipeline.errors import BatchApiError
from pipeline.store.book import BatchBook, Entry, Status

RETRIES = 2  # status is a look, not a run: a server that does not answer is said so soon
TIMEOUT_S = 30.0


async def refresh(
    directories: Iterable[Path], base_url: str | None = None, api_key_env: str | None = None
) -> tuple[dict[str, Status], list[str]]:
    """The current state of every batch not yet collected in the books of `directories`,
    by batch id, and a line for each that could not be asked (and why)."""
    trusted = trusted_hosts(base_url)
    fresh: dict[str, Status] = {}
    notes: list[str] = []
    for entry in [e for d in directories for e in BatchBook(d).pending()]:
        why = _not_asked(entry, trusted)
        if why:
            notes.append(why)
            continue
        assert entry.status is not None and entry.batch_id is not None
        try:
            batch = await _get(entry, api_key_env)
        except BatchApiError as e:
            notes.append(f"{entry.batch_id}: not refreshed: {e}")
            continue
        fresh[entry.batch_id] = status_of(batch, adopted=entry.status.adopted)
    return fresh, notes


def _not_asked(entry: Entry, trusted: set[str]) -> str | None:
    """Why this batch is shown as last seen, not asked about; None: ask."""
    intent, status = entry.intent, entry.status
    if status is None or status.batch_id is None:
        return f"#{intent.number}: create not confirmed: no batch id to ask about"
    if intent.simulated:
        return f"{status.batch_id}: was on a --simulate run's simulator, gone with it"
    if intent.base_url.rstrip("/") not in trusted:
        return (
            f"{status.batch_id}: made on {intent.base_url}; to ask there, add "
            f"--base-url {intent.base_url}"
        )
    return None


async def _get(entry: Entry, api_key_env: str | None) -> dict[str, object]:
    """GET the batch, authenticated as the run that made it was (bearer or x-api-key)."""
    assert entry.batch_id is not None
    api = batches_api(entry.intent, api_key_env, max_retries=RETRIES, timeout_s=TIMEOUT_S)
    try:
        return await api.get(entry.batch_id)
    finally:
        await api.aclose()
