"""What a command's process tells the native libraries it loads, in the environment they
read once, before pyarrow (and numpy, which pyarrow imports) are imported: the command line
calls `set_native_libraries` first. Children (Ray's workers) inherit it; a variable the
user set is the user's choice. Whether numpy loads at all (`leave_numpy_unloaded`: only
where Ray runs). And what it tells the interpreter about its exit
(`collect_nothing_at_exit`).
"""

from __future__ import annotations

import atexit
import functools
import gc
import importlib.abc
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


def set_native_libraries() -> None:
    _return_arrow_memory()
    _one_blas_thread()


def _one_blas_thread() -> None:
    """Where numpy loads (a Ray run's driver and workers, whose pyarrow imports it), its
    OpenBLAS starts a thread a core, which spin after their start: `import numpy` takes
    0.25 CPU-s against 0.14 with one thread. No command does linear algebra."""
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


def leave_numpy_unloaded() -> None:
    """pyarrow imports numpy whenever it is installed (pyarrow.lib: `try: import numpy`),
    for conversions to and from numpy that no command makes: 0.1 s of every command's start
    and 0.1-0.2 CPU-s, 25 MB. So a command whose process is its own and that will not
    start Ray (whose Data library needs numpy) has numpy found with no loader before
    pyarrow loads: `import numpy` raises ImportError, which pyarrow takes as numpy not
    installed, and polars (which asks `importlib.util.find_spec`) as well. Once pyarrow is
    loaded its choice is made: a process that loaded it first keeps what it has."""
    if "pyarrow" in sys.modules or "numpy" in sys.modules:
        return
    sys.meta_path.insert(0, _NumpyLeftOut())


class _NumpyLeftOut(importlib.abc.MetaPathFinder):
    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        return ModuleSpec(name, None) if name == "numpy" else None


@functools.cache  # once a process: the tests call `main` again and again
def collect_nothing_at_exit() -> None:
    """At its exit the interpreter collects the whole heap (polars, pyarrow, aiohttp and
    ours: 100,000 objects) several times over while it tears the modules down, about 65 ms
    of CPU for memory the system takes back whole a moment later. The heap is frozen
    instead, after every other exit handler (they run last registered, first): 85 -> 19 ms
    from the last handler to the end of a `pipeline run`. No output waits for a collection:
    the journal is written with os.write at once, and parts and reports are closed where
    they are written."""
    atexit.register(gc.freeze)
