"""An output at a URL (`s3://bucket/prefix`, any scheme pyarrow's filesystems serve; the
credentials and endpoint from the environment only, AWS_ENDPOINT_URL for an S3-compatible
store, never written anywhere).

A run works in a local mirror of the output (job.model.mirror_of: $PIPELINE_MIRRORS/NAME,
by default ~/.cache/pipeline/mirrors/NAME), exactly as in a local output directory: the
journal, the lock, parts, job.json. What a later run needs is put to the URL as whole
objects (a PUT is atomic: an object is there whole or not at all): parts as they are
folded, job.json, prices.json, the batch book, run.json and results.parquet at the end.
The journal stays in the mirror and is folded into a part at least every `[job] fold_s`
seconds while the run goes (`Replica.keep_pushing`), so a machine lost for good loses at
most that many seconds of paid answers (plus what was in flight). A run on another machine
first pulls what the URL holds into its own mirror.

One run at a time: a lease object (`.lease`, its holder and expiry) is taken before the
pull, renewed at every fold while the run goes and removed at its end; a run finding
another's lease unexpired is refused; a killed run's lease expires 3 x fold_s after its
last renewal (3 minutes by default). A run that cannot renew its lease stops sending
before it could lapse, and puts nothing at its end once another run holds the lease.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.fs as pafs

from pipeline.errors import JobStopped, OutputUnreachable, UsageError, first_line
from pipeline.store import durable
from pipeline.store.layout import (
    DAMAGED_DIR,
    JOURNAL_PREFIX,
    LEASE,
    LOCK,
    PART_GLOB,
    PARTS_DIR,
    SHARDS_DIR,
    SYNCED,
    TAKEN,
    UNRECORDED_FILE,
)
from pipeline.store.part_check import damaged_parts
from pipeline.store.synced import (
    Matched,
    Signature,
    kept_at_pull,
    read_record,
    signature,
    to_put,
    write_record,
)

LEASES_PER_FOLD = 3  # a lease lasts 3 folds: renewed at each, it outlives a slow one
LOCAL_ONLY = {LOCK, UNRECORDED_FILE, DAMAGED_DIR, SHARDS_DIR}  # never put to the URL


class Replica:
    """The output at `url`, mirrored in `mirror`."""

    def __init__(self, url: str, mirror: Path, fold_s: float = 60.0) -> None:
        self.url, self.mirror = url, mirror
        self.lease_s = LEASES_PER_FOLD * fold_s
        try:
            self.filesystem, self.base = pafs.FileSystem.from_uri(url)
        except (OSError, ValueError) as e:
            raise UsageError(f"output {url}: {str(e).splitlines()[0]}") from None
        self.base = self.base.rstrip("/")
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # relative path -> its copies as they last matched (store.synced): what a push
        # need not put; filled by this replica's pulls and puts, never taken on trust
        self.matched: dict[str, Matched] = {}
        # one pull or push at a time: a fold's push cancelled at the run's end may still be
        # running on its thread when the last one starts
        self._syncing = threading.Lock()
        # when this run's lease runs out, as last renewed (UNIX time); a replica that has
        # taken none (a --ray worker's shard) has none to lose
        self.expires = math.inf

    # --- the lease ------------------------------------------------------------------
    def take_lease(self) -> None:
        """UsageError (one line) while another run's lease is unexpired."""
        held = self._read_lease()
        if held and held["holder"] != self.holder and held["expires"] > time.time():
            until = time.strftime("%H:%M:%S", time.localtime(held["expires"]))
            raise UsageError(
                f"output {self.url}: another run holds it ({held['holder']}, lease until "
                f"{until}); one run at a time (a killed run's lease ends {self.lease_s:g} s "
                "after its last renewal)"
            )
        self.renew_lease()
        if (self._read_lease() or {}).get("holder") != self.holder:  # two took it at once
            raise UsageError(f"output {self.url}: another run took it just now")

    def renew_held(self) -> None:
        """`renew_lease`, unless the lease ran out meanwhile (a thread that held the event
        loop too long) and another run has taken the output over: then OutputUnreachable,
        the stop this run must make, and never that run's lease taken back from it."""
        if time.time() >= self.expires and not self.holds_lease():
            raise OutputUnreachable(
                f"output {self.url}: its lease ran out before it was renewed and another "
                f"run took the output over: stopped sending; the answers are kept in "
                f"{self.mirror}"
            )
        self.renew_lease()

    def renew_lease(self) -> None:
        expires = time.time() + self.lease_s
        self._put_bytes(LEASE, json.dumps({"holder": self.holder, "expires": expires}).encode())
        self.expires = expires

    @property
    def leased(self) -> bool:
        """This replica took the output's lease (a --ray worker's shard takes none: no
        lease object is ever made at its shard's URL)."""
        return math.isfinite(self.expires)

    def holds_lease(self) -> bool:
        """No other run has taken the output over (a lease gone is nobody's)."""
        held = self._read_lease()
        return held is None or held.get("holder") == self.holder

    def release_lease(self) -> None:
        if (self._read_lease() or {}).get("holder") == self.holder:
            self.filesystem.delete_file(self._remote(LEASE))

    def _read_lease(self) -> dict[str, Any] | None:
        try:
            with self.filesystem.open_input_stream(self._remote(LEASE)) as stream:
                return dict(json.loads(stream.read()))
        except (FileNotFoundError, ValueError):
            return None

    # --- pull and push ---------------------------------------------------------------
    def pull(self) -> int:
        """What the URL holds and the mirror lacks (or holds otherwise), into the mirror;
        the number of files fetched. The mirror's own unpushed files stay, and so does a
        record the mirror changed since the URL last matched it (SYNCED: run.json, a
        batch's status, written by a run here whose last put did not happen), unless the
        URL changed it since too (another machine's run): then the URL's is the newer. A
        part is never changed once written: one that differs is damaged, and fetched, as
        is one of the URL's size that its damage check finds damaged."""
        with self._syncing:
            return self._pull()

    def _pull(self) -> int:
        fetched, taken, kept_parts = 0, [], {}
        last = read_record(self.mirror / SYNCED)
        for relative, url in self._remote_files().items():
            local = self.mirror / relative
            kept = kept_at_pull(relative, url, signature(local), last.get(relative))
            if kept is None:
                kept = Matched(url, self._fetch(relative))
                fetched += 1
            elif local.parent.name == PARTS_DIR and local.match(PART_GLOB):  # any output's
                kept_parts[local] = (relative, url)  # (a cascade phase's, a shard's)
            if relative.startswith(f"{SHARDS_DIR}/"):  # fetched now, or by a pull that
                taken.append(relative)  # failed before it could note it
            # known only once fetched or kept: a pull that fails part-way leaves no file
            # named here that the mirror lacks (a push would remove it from the URL)
            self.matched[relative] = kept
        # a part kept for its size may be a damaged copy: the URL's is fetched over it,
        # never set aside by the run and the URL's good one removed by the next push (the
        # check takes the answers check_ahead has, and remembers: the run's own re-hashes)
        for path, _ in damaged_parts(list(kept_parts)):
            if path.exists():  # (merged away meanwhile by a run here: not damage)
                relative, url = kept_parts[path]
                self.matched[relative] = Matched(url, self._fetch(relative))
                fetched += 1
        if taken:  # a worker's shard, fetched to be taken in: dropped from the URL after
            self._note_taken(taken)
        write_record(self.mirror / SYNCED, self.matched)
        return fetched

    def _fetch(self, relative: str) -> Signature | None:
        """The URL's copy into the mirror, whole; the mirror's copy of it as written."""
        local = self.mirror / relative
        local.parent.mkdir(parents=True, exist_ok=True)
        with self.filesystem.open_input_stream(self._remote(relative)) as stream:
            durable.write_bytes(local, stream.read())
        return signature(local)

    def push(self) -> int:
        """Every mirror file changed since it last matched the URL's copy (or never known
        to), put whole; parts the mirror merged away (store.sink.consolidate) removed from
        the URL after the merged part is there. The number of files put."""
        with self._syncing:
            return self._push()

    def _push(self) -> int:
        local = dict(self._local_files())
        put: dict[str, Signature] = {}
        for relative, path in sorted(local.items(), key=lambda item: _parts_first(item[0])):
            mine = signature(path)  # before the read: a change meanwhile is put next time
            if mine is None or not to_put(mine, self.matched.get(relative)):
                continue  # (merged away since listed: kept at the URL until its part is)
            try:
                self._put_file(relative, path)
            except FileNotFoundError:
                continue
            put[relative] = mine
        if put:  # as a listing gives them, as a pull will (a HEAD may round the time)
            listed = self._remote_files()
            for relative, mine in put.items():
                self.matched[relative] = Matched(listed.get(relative, (0, None)), mine)
        for relative in [r for r in self.matched if _is_part(r) and r not in local]:
            self.filesystem.delete_file(self._remote(relative))
            del self.matched[relative]
        write_record(self.mirror / SYNCED, self.matched)
        return len(put)

    def drop_merged_shards(self) -> None:
        """A --ray run's shards (ray/shard-K/, put there by its workers) that this mirror
        took into its parts, removed from the URL once those parts are there (`push`)."""
        with self._syncing:
            self._drop_merged_shards()

    def _drop_merged_shards(self) -> None:
        taken = self._taken()
        if not taken:
            return
        remote = self._remote_files()
        for relative in sorted(taken):  # fetched here, merged into parts since (now put)
            if relative in remote and not (self.mirror / relative).exists():
                self.filesystem.delete_file(self._remote(relative))
                self.matched.pop(relative, None)
        kept = [r for r in taken if (self.mirror / r).exists()]  # not merged yet
        durable.write_bytes(self.mirror / TAKEN, "\n".join(kept).encode())

    def _taken(self) -> set[str]:
        path = self.mirror / TAKEN
        return set(path.read_text().split()) if path.exists() else set()

    def _note_taken(self, relatives: list[str]) -> None:
        path = self.mirror / TAKEN
        path.parent.mkdir(parents=True, exist_ok=True)
        durable.write_bytes(path, "\n".join(sorted(self._taken() | set(relatives))).encode())

    async def keep_pushing(
        self,
        fold_now: Callable[[], Awaitable[None]],
        every_s: float,
        stop: Callable[[JobStopped], None] | None = None,
    ) -> None:
        """While a run goes: every `every_s`, its live journal folded into a part
        (`fold_now`) and what changed put to the URL; the lease renewed. Run as a task;
        cancelled at the run's end. A store that refuses or cannot be reached is said once
        and tried again at the next fold: the answers wait in the mirror meanwhile. When
        the lease could run out before the next try, the run is stopped (`stop`): another
        run may take the output over then, and must not find this one still sending."""
        tries = StoreTries(self, every_s)
        while True:
            await asyncio.sleep(every_s)
            reason = await self._fold_and_push(fold_now, tries)
            if reason is not None:
                if stop is not None:
                    stop(reason)
                return

    async def _fold_and_push(
        self, fold_now: Callable[[], Awaitable[None]], tries: StoreTries
    ) -> JobStopped | None:
        """One fold: the lease renewed first (a slow push must not outlast it), the journal
        folded, what changed put; the stop to make, if the run must stop."""
        try:
            if self.leased:
                await asyncio.to_thread(self.renew_held)
            await fold_now()
            await asyncio.to_thread(self.push)
        except OutputUnreachable as taken_over:
            return taken_over
        except OSError as e:  # pyarrow's filesystems raise OSError for what the store says
            return tries.refused(e)
        tries.answered()
        return None

    def unreachable(self, error: OSError) -> str:
        """One line: the URL could not be written, and where its answers wait."""
        reason = first_line(error)
        return (
            f"output {self.url}: could not put to it ({reason}); the answers are kept in "
            f"{self.mirror}"
        )

    def _local_files(self) -> Iterator[tuple[str, Path]]:
        for path in self.mirror.rglob("*"):
            relative = path.relative_to(self.mirror).as_posix()
            top = relative.split("/")[0]
            name = path.name
            if path.is_dir() or top in LOCAL_ONLY or name in LOCAL_ONLY:
                continue
            if name.startswith(JOURNAL_PREFIX) or name.startswith(".") or ".tmp" in name:
                continue  # the journal stays local; temporaries are no one's yet
            yield relative, path

    def _remote_files(self) -> dict[str, Signature]:
        selector = pafs.FileSelector(self.base, recursive=True, allow_not_found=True)
        found = {}
        for info in self.filesystem.get_file_info(selector):
            relative = info.path[len(self.base) :].lstrip("/")
            if info.type == pafs.FileType.File and relative != LEASE:
                found[relative] = (int(info.size or 0), info.mtime_ns)
        return found

    def _put_file(self, relative: str, path: Path) -> None:
        self._put_bytes(relative, path.read_bytes())

    def _put_bytes(self, relative: str, content: bytes) -> None:
        if isinstance(self.filesystem, pafs.LocalFileSystem):  # file://: it has directories
            parent = str(PurePosixPath(self._remote(relative)).parent)
            self.filesystem.create_dir(parent, recursive=True)
        with self.filesystem.open_output_stream(self._remote(relative)) as stream:
            stream.write(content)

    def _remote(self, relative: str) -> str:
        return f"{self.base}/{relative}"


class StoreTries:
    """A store's refusals as a run meets them, fold after fold (keep_pushing, LeaseKeeper):
    the first said, its answering again said, and the stop to make once the lease could
    run out before the next try, `every_s` on."""

    def __init__(self, replica: Replica, every_s: float) -> None:
        self.replica, self.every_s = replica, every_s
        self.failing = False

    def refused(self, error: OSError) -> OutputUnreachable | None:
        replica = self.replica
        if not self.failing:
            print(f"warning: {replica.unreachable(error)}; tried again every "
                  f"{self.every_s:g} s", file=sys.stderr)  # fmt: skip
        self.failing = True
        if time.time() + self.every_s >= replica.expires:
            return OutputUnreachable(self._lease_running_out(error))
        return None

    def _lease_running_out(self, error: OSError) -> str:
        replica = self.replica
        until = time.strftime("%H:%M:%S", time.localtime(replica.expires))
        return (
            f"output {replica.url}: its lease could not be renewed ({first_line(error)}) and "
            f"runs out at {until}: stopped sending, so that no run taking the output over "
            f"finds this one still sending; the answers are kept in {replica.mirror}: run "
            "again once the store answers"
        )

    def answered(self) -> None:
        if self.failing:
            print(f"note: output {self.replica.url} reached again", file=sys.stderr)
        self.failing = False


class LeaseKeeper:
    """`keep_pushing`'s lease half, for an engine that holds the event loop while it runs
    (a --ray driver supervising its workers, where no task of the loop runs): called at
    every turn of its own loop, it renews the lease once every `every_s`; a refusal is
    said once, and once the lease could run out before the next try it gives the stop to
    make (OutputUnreachable), as keep_pushing does."""

    def __init__(self, replica: Replica, every_s: float) -> None:
        self.replica, self.every_s = replica, every_s
        self.retry_at = 0.0  # after a refusal: the next try (time.monotonic)
        self.tries = StoreTries(replica, every_s)

    def __call__(self) -> JobStopped | None:
        replica = self.replica
        renewed_at = replica.expires - replica.lease_s  # by whoever renewed it last
        if time.time() < renewed_at + self.every_s or time.monotonic() < self.retry_at:
            return None  # (a replica that took no lease: renewed at infinity)
        try:
            replica.renew_held()
        except OutputUnreachable as taken_over:
            return taken_over
        except OSError as e:
            self.retry_at = time.monotonic() + self.every_s
            return self.tries.refused(e)
        self.tries.answered()
        return None


def _is_part(relative: str) -> bool:
    """One of the output's own parts (not a --ray shard's, which its worker puts)."""
    return PurePosixPath(relative).parent == PurePosixPath(PARTS_DIR)


def _parts_first(relative: str) -> tuple[int, str]:
    """Parts before anything that speaks of them (results.parquet, run.json)."""
    return (0 if _is_part(relative) else 1, relative)
