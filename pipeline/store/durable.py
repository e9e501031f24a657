"""Writes that survive a crash or a power cut: a temporary name, fsync, `os.replace`,
then fsync of the directory so the rename itself is on disk.

A paid answer's only copy may be the file being replaced (a sealed journal is deleted once
its part file exists), so "written" must mean "on disk", not "in the page cache".
Local write failures (disk full, permission, read-only filesystem) are `OSError`s here;
callers turn them into `LocalWriteError` (exit 6) with the path.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# errno values that mean "this machine cannot write there now", not a bug
WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_directory(directory: Path) -> None:
    """Make a rename or unlink in `directory` survive a power cut (a no-op where the
    filesystem cannot open a directory for syncing)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # no directory fsync here: fine
            raise
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Write to the yielded temporary path; on success it is fsync'd and renamed onto
    `path` (then the directory is fsync'd). On failure the temporary file is removed, so a
    full disk leaves no half-written file that could look complete."""
    temporary = temporary_name(path)
    try:
        yield temporary
        sync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path) as temporary:
        temporary.write_bytes(data)


def write_with(path: Path, write: Callable[[Path], object]) -> None:
    """`write(temporary)` produces the file; it lands at `path` only when complete."""
    with replacing(path) as temporary:
        write(temporary)


def is_write_error(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in WRITE_ERRNOS


def describe(error: OSError, default_path: Path) -> str:
    """`disk full at PATH`, or `cannot write PATH (reason)`: where and what, in a line."""
    path = error.filename or default_path  # os.write on a descriptor names no file
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full at {path}"
    return f"cannot write {path} ({error.strerror or error.__class__.__name__})"


def remedy(error: OSError) -> str:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free space and run again"
    return "fix it and run again"
