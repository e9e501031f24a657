"""The output's lock (`OUTPUT/.lock`): one run on a directory at a time."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from pipeline.errors import UsageError
from pipeline.store.layout import LOCK


def lock_output(output_dir: Path) -> IO[bytes]:
    """An exclusive lock on the output directory for this process's lifetime: two runs on
    one directory would fold each other's journal and pay twice."""
    output_dir.mkdir(parents=True, exist_ok=True)
    handle = (output_dir / LOCK).open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UsageError(
            f"{output_dir} is in use by another run of this job, or a command reading it "
            "(wait for it, or stop it first)"
        ) from None
    return handle
