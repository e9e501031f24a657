"""Work started ahead: on a thread of its own, while the command imports the rest, and
taken by the code that would otherwise do it then. The one home of that mechanism: a
resume's parts checked (store.part_check), its input's ids read and checked
(input.source), the input's digest taken (store.manifest), what its parts finished
(store.checkpoint).

The command line knows a run's job and files about 0.3 s before its imports (polars,
pyarrow, aiohttp, the pipeline: they hold the GIL) let the run begin; reading Parquet and
hashing let the GIL go, so that work is done then, on the other core.

Work is keyed by what it is about, the identity of each file it reads included (device,
inode, size, change and modification times: `file_identity`). The code that needs the
answer asks with the key as it is then: a file written or replaced since gives another key,
and that code does the work itself. Work not yet begun when it is asked for is cancelled,
and done by the asker (`take`), so nothing waits on a queue.

A library whose import waits on the system more than on the interpreter is imported on a
thread of its own beside them (`import_beside`): aiohttp's import loads the system's CA
certificates into an SSL context, about 40 ms with the GIL let go.

Only the standard library is imported here: the command line reaches this module before
anything else.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

Identity = tuple[int, int, int, int, int]  # device, inode, size, ctime, mtime: one file

_started: dict[Hashable, Future[Any]] = {}  # by key, until taken
_queue: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
_lock = threading.Lock()
_worker: list[threading.Thread] = []  # the running worker, if any


def file_identity(path: Path) -> Identity | None:
    """The file at `path` as it is now (None: there is none)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns, st.st_mtime_ns)


def file_key(what: str, path: Path, *asked: Hashable) -> Hashable | None:
    """The key of work `what` (asked `asked`) about the file at `path` as it is now; None
    when there is no file there."""
    identity = file_identity(path)
    return None if identity is None else (what, str(path), asked, identity)


def import_beside(module: str) -> None:
    """`module` imported on a thread of its own, now: the command's own import of it then
    finds it there, or waits for it. A failure is left for that import to raise."""

    def load() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module(module)

    threading.Thread(target=load, name=f"import {module}", daemon=True).start()


def start(key: Hashable | None, work: Callable[[], Any]) -> None:
    """`work` queued for the ahead thread under `key` (once: a key started already, and
    not taken yet, is left as it is; none: no key, work about no file that can be told
    apart as it is now)."""
    with _lock:
        if key is None or key in _started:
            return
        future: Future[Any] = Future()
        _started[key] = future
        _queue.append((future, work))
        if not _worker:
            _worker.append(threading.Thread(target=_work, name="ahead"))
            _worker[0].start()


def take(key: Hashable | None) -> Future[Any] | None:
    """The work started under `key`, taken (once): its future, running or done; None
    when none was started (no key: none ever is), or it had not begun (it never will
    now: the asker does it)."""
    with _lock:
        future = _started.pop(key, None) if key is not None else None
    if future is None or future.cancel():
        return None
    return future


def peek(key: Hashable | None) -> Future[Any] | None:
    """The work started under `key` and not taken yet, left where it is."""
    with _lock:
        return _started.get(key) if key is not None else None


def started(key: Hashable | None) -> bool:
    """Whether work under `key` was started and not taken yet."""
    with _lock:
        return key is not None and key in _started


def _work() -> None:
    """The queued work, in the order it was started, until none is left; none once the
    command has ended (refused, interrupted): the interpreter waits for this thread, and
    no one will ask. Not a daemon thread: one stopped inside Arrow's C++ code at exit may
    abort."""
    while True:
        with _lock:
            if not _queue or not threading.main_thread().is_alive():
                _worker.clear()
                return
            future, work = _queue.popleft()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(work())
        except BaseException as e:  # an answer still: the asker raises it
            future.set_exception(e)
