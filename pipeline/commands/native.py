"""What a command's process tells the native libraries it loads, in the environment they
read once, before pyarrow (and numpy, which pyarrow imports) are imported: the command line
calls `set_native_libraries` first. Children (Ray's workers) inherit it; a variable the
user set is the user's choice."""

from __future__ import annotations

import os
import sys


def set_native_libraries() -> None:
    _return_arrow_memory()
    _one_blas_thread()


def _one_blas_thread() -> None:
    """pyarrow imports numpy whenever it is installed, and numpy's OpenBLAS starts a thread
    a core, which spin after their start: 0.1 CPU-s a command (`import numpy`: 0.25 CPU-s
    against 0.14 with one thread), taken from the core a resume checks its parts on. No
    command does linear algebra."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _return_arrow_memory() -> None:
    """pyarrow's own allocator (mimalloc) keeps what a run's part writes and merges freed:
    a 100,000-row batch collection peaked at 550 MB with it, 433 MB with the system's, at
    the same speed; a 20,000-row run 220 MB against 193. Arrow's C++ code reads the choice
    from the environment once; when something imported pyarrow first (a test, a notebook),
    only its Python calls can be moved."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    if "pyarrow" not in sys.modules:
        os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
        return
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
