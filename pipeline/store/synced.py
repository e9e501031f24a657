"""What a mirror knows of its URL (store.remote): for each file, the URL's copy and the
mirror's own as they were when the two last matched (put, fetched, or found equal), kept
across runs in the mirror's SYNCED record.

A copy is known by its size and modification time: a record such as run.json is rewritten
at the same size often (counts and times of the same width), which its size alone would
not show, so it would never be put, or never fetched. A part (the output's, a cascade
phase's) or a --ray shard's file is never rewritten: a copy of another size is damaged
(and one of the same size is checked by the pull: remote.Replica).

The decisions are pure functions (`kept_at_pull`, `to_put`); remote.Replica lists, reads
and writes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.store import durable
from pipeline.store.layout import PARTS_DIR, SHARDS_DIR

# a copy's size and modification time in ns (None: unknown); the URL's always as a listing
# gives it (an S3-compatible store may list milliseconds and answer a HEAD in seconds)
Signature = tuple[int, int | None]


@dataclass(frozen=True)
class Matched:
    """A file's two copies when they last matched."""

    url: Signature
    local: Signature | None  # None: not known to match the URL's (a push puts it)


def signature(path: Path) -> Signature | None:
    """The mirror's copy of a file (None: there is none)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns)


def immutable(relative: str) -> bool:
    """A part (the output's, a cascade phase's) or a --ray shard's file: never rewritten."""
    path = PurePosixPath(relative)
    return path.parent.name == PARTS_DIR or path.parts[0] == SHARDS_DIR


def kept_at_pull(
    relative: str, url: Signature, local: Signature | None, last: Matched | None
) -> Matched | None:
    """At a pull: None to fetch the URL's copy over the mirror's; else the mirror's copy
    stays, and this is what is known of the two. `last`: as they last matched (SYNCED).

    With no history (or a file never rewritten), copies of one size are taken as the
    same and any other is fetched (a part that differs is damaged). A record the URL has
    not changed since they matched stays as the mirror has it, changed or not (changed:
    a run here whose last put did not happen; the push puts it). A record the URL changed
    since is fetched: another machine's run, which held the lease after, wrote it."""
    if local is None:
        return None
    if last is None or immutable(relative):
        return Matched(url, local) if url[0] == local[0] else None
    if last.url[1] is None:  # a record of sizes only (an earlier version's, a store without
        # times): as that version did, the mirror's copy stays and is put only if its size
        # is not the URL's (a copy of the same size is taken as the same)
        if url[0] != last.url[0]:
            return None
        return Matched(url, local) if local[0] == url[0] else Matched(url, None)
    return last if url == last.url else None


def to_put(local: Signature, known: Matched | None) -> bool:
    """Whether a push puts the mirror's copy: changed since it last matched the URL's, or
    never known to."""
    return known is None or known.local != local


def read_record(path: Path) -> dict[str, Matched]:
    """The SYNCED record ({} if none, or unreadable: every copy is judged by its size).
    A record of sizes alone (an earlier version's) gives URL copies of unknown time."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if type(record) is not dict:
        return {}
    found = {}
    for relative, value in record.items():
        if type(value) is int:
            found[str(relative)] = Matched((value, None), None)
        elif _is_four_numbers(value):
            url_size, url_time, local_size, local_time = value
            local = (local_size, local_time) if local_size is not None else None
            found[str(relative)] = Matched((url_size, url_time), local)
    return found


def _is_four_numbers(value: object) -> bool:
    return (
        type(value) is list
        and len(value) == 4
        and type(value[0]) is int
        and all(v is None or type(v) is int for v in value[1:])
    )


def write_record(path: Path, matched: dict[str, Matched]) -> None:
    """After a pull and a push (a kill before it leaves the one before, which only ever
    fetches or puts more)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        relative: [*m.url, *(m.local if m.local is not None else (None, None))]
        for relative, m in matched.items()
    }
    durable.write_bytes(path, json.dumps(content, sort_keys=True).encode())
