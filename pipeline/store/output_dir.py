"""Is the job's output a directory the pipeline may fill (and `--fresh` may move aside)?

Checked before anything is created, locked or moved: the output directory gets job.json,
parts/, journals and results.parquet, and `--fresh` moves the whole directory aside. So it
must not be a filesystem root or the home directory, a file, a path under a file, or a
directory holding the input; with `--fresh` also not one holding the job file, the current
directory, or files that are not a pipeline output. Symlinks and `..` are resolved first,
so `out -> /` or `/tmp/..` are seen for what they are.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import UsageError
from pipeline.input.locations import GLOB, is_single_file
from pipeline.job.model import InputPath, Job
from pipeline.store.layout import (
    INPUT_SNAPSHOT,
    JOURNAL_PREFIX,
    LOCK,
    MANIFEST,
    PARTS_DIR,
    RESULTS_FILE,
    RUN_RECORD,
    SHARDS_DIR,
)

# what marks a pipeline output
OURS = {LOCK, MANIFEST, RUN_RECORD, PARTS_DIR, RESULTS_FILE, SHARDS_DIR}
NAME_MAX = 255  # bytes in one path component on every common Linux / macOS file system


def check_output_dir(job: Job, *, fresh: bool = False) -> None:
    """Refuse (UsageError, exit 2, one line) an output the pipeline must not write to."""
    problem = _problem(job, fresh)
    if problem is not None:
        raise UsageError(f"output directory '{job.output}' {problem}")


def _problem(job: Job, fresh: bool) -> str | None:
    output = job.output
    if "\0" in str(output):
        return "contains a NUL character"
    try:
        resolved = output.resolve()
        home = _home()
        problem = _not_a_directory(output) or _too_long(resolved)
        seen = f" ({resolved})" if resolved != output.absolute() else ""
        if problem is None and resolved == Path(resolved.anchor):
            problem = f"is a filesystem root{seen}: name a directory of its own for the results"
        if problem is None and resolved == home:
            problem = f"is your home directory{seen}: name a directory of its own for the results"
        if problem is None:
            problem = _input_problem(resolved, job.input, output)
        if problem is None and fresh:
            problem = _fresh_problem(job, resolved)
    except (OSError, RuntimeError) as e:  # a symlink loop, an unreadable directory
        return f"cannot be checked: {(e.strerror if isinstance(e, OSError) else None) or e}"
    return problem


def _not_a_directory(output: Path) -> str | None:
    """The output, or a directory on its way, exists and is not a directory (a symlink
    to one is fine)."""
    absolute = output if output.is_absolute() else Path.cwd() / output
    for path in (absolute, *absolute.parents):
        if os.path.lexists(path) and not path.is_dir():
            if path == absolute:
                kind = "a broken symlink" if path.is_symlink() else "an existing file"
                return f"is {kind}, not a directory"
            return f"cannot be created: '{path}' is a file, not a directory"
    return None


def _too_long(resolved: Path) -> str | None:
    for part in resolved.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            return f"has a name longer than {NAME_MAX} bytes ({part[:24]}...)"
    return None


def _fresh_problem(job: Job, resolved: Path) -> str | None:
    """--fresh moves the whole directory aside: never with the user's files in it."""
    if job.source_file is not None and _holds(resolved, job.source_file):
        return f"holds the job file '{job.source_file}': --fresh would move it aside"
    if _inside(Path.cwd().resolve(), resolved) or Path.cwd().resolve() == resolved:
        return "holds the current directory: --fresh would move it from under you"
    if not resolved.is_dir():
        return None
    names = sorted(p.name for p in resolved.iterdir())
    if names and not any(n in OURS or n.startswith(JOURNAL_PREFIX) for n in names):
        return (
            f"holds files that are not a pipeline output ('{names[0]}', ...): --fresh "
            "would move them aside; choose a new or empty directory"
        )
    return None


def _inside(path: Path, directory: Path) -> bool:
    return directory in path.parents


def _input_problem(resolved: Path, where: InputPath, output: Path) -> str | None:
    """The output must not hold the input, nor lie in a directory whose files are the input
    (its parts would become input rows)."""
    if isinstance(where, str) or where == output / INPUT_SNAPSHOT:  # a URL; a frame's copy
        return None
    if is_single_file(where):
        held = _holds(resolved, where)
        return f"holds the input file '{where}': choose one that does not" if held else None
    parts = where.absolute().parts
    base = Path(*parts[: next((i for i, p in enumerate(parts) if GLOB & set(p)), len(parts))])
    base = base.resolve()
    if resolved == base or _inside(resolved, base):
        return f"is inside the input directory '{base}': its files would become input"
    if _inside(base, resolved):
        return f"holds the input directory '{base}': choose one that does not"
    return None


def _holds(directory: Path, file: Path) -> bool:
    """The file, or the symlink naming it, lies under `directory` (either would be moved
    aside by --fresh, or mixed with the results)."""
    entry = file.absolute().parent.resolve() / file.name
    return _inside(file.resolve(), directory) or _inside(entry, directory)


def _home() -> Path | None:
    try:
        return Path.home().resolve()
    except (KeyError, RuntimeError, OSError):  # no HOME and no passwd entry
        return None
