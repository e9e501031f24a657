"""`OUTPUT/job.json`: what shapes a job's requests (its fingerprint, the input's identity,
the labelling), and whether a later run is the same job: one that differs is refused,
naming the setting (or relabels, with --reparse).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Mapping
from concurrent.futures import Executor, Future
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import ahead
from pipeline.errors import UsageError
from pipeline.input.locations import InputPath, ahead_key, find_files, is_single_file
from pipeline.job.model import Job
from pipeline.store import durable
from pipeline.store.book import BatchBook
from pipeline.store.layout import JOURNAL as LIVE
from pipeline.store.layout import JOURNAL_PREFIX, SEALED_GLOB, part_files, shard_dirs
from pipeline.store.layout import MANIFEST as MANIFEST
from pipeline.store.parts import MANIFEST_KEY, read_part

SAMPLE_BYTES = 1 << 20  # earlier versions' identity: the size and the first and last MiB
INPUT_CONTENT = "the input file's content"
IDENTITY = "input identity"  # input_identity's work, in pipeline.ahead's keys


def fingerprint(
    job: Job, price_table_version: str, input_content: str | None = None
) -> dict[str, Any]:
    """Every setting that shapes a request or an output row, by the name a user knows.
    `input_content`: the input's `input_identity`, when it was computed already."""
    settings: dict[str, Any] = {
        INPUT_CONTENT: input_content or input_identity(job.input),
        "[job] id_column": job.id_column,
        "[job] keep_columns": list(job.keep_columns),
        "[job] gold_column": job.gold_column,
        "[api] format": job.api.format,
        "[request] prompt": job.prompt.text,
        **({"[cascade] signal": job.prompt_after} if job.prompt_after else {}),
        "[request] system": job.system,
        "[overrides]": dict(sorted(job.overrides.items())),
        "the price table version": price_table_version,
    }
    for key, value in sorted(job.request.items()):
        settings[f"[request] {key}"] = value
    stored: dict[str, Any] = json.loads(json.dumps(settings, default=list))
    return stored  # as json.json will hold it: tuples become lists


def input_identity(path: InputPath) -> str:
    """The size and a sha256 of the input's whole content, streamed (about 0.1 s for
    180 MB here): any edit is detected, even a same-size swap of two lines mid-file,
    while a move or a touch changes nothing. A directory, glob or URL: every file's name,
    size and content digest (input.locations)."""
    if not is_single_file(path):
        return find_files(path).identity()
    assert isinstance(path, Path)
    size = path.stat().st_size
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    return f"{size} bytes, sha256 {digest}"


def identity_ahead(path: InputPath) -> None:
    """`input_identity` started on the ahead thread (pipeline.ahead), for one local file:
    a run's command line calls it before the run's imports (a 180 MB input's digest then
    costs its resume nothing)."""
    ahead.start(ahead_key(IDENTITY, path), functools.partial(input_identity, path))


def identity_soon(path: InputPath, pool: Executor) -> Future[str]:
    """`input_identity` as `identity_ahead` took it of the file as it is now, else
    started on `pool`."""
    started = _taken_identity(path)
    return started if started is not None else pool.submit(input_identity, path)


def identity_now(path: InputPath) -> str:
    """`input_identity` as `identity_ahead` took it of the file as it is now, else taken
    here (a cascade's record of its input)."""
    started = _taken_identity(path)
    return started.result() if started is not None else input_identity(path)


def _taken_identity(path: InputPath) -> Future[str] | None:
    return ahead.take(ahead_key(IDENTITY, path))


def _legacy_identity(path: Path) -> str:
    """What earlier versions recorded: the size and a hash of the first and last MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as file:
        digest.update(file.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            file.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            digest.update(file.read(SAMPLE_BYTES))
    return f"{size} bytes, sha256 sample {digest.hexdigest()[:16]}"


def labelling(job: Job) -> dict[str, Any]:
    """The [extract] settings, as job.json holds them: not request-shaping (--reparse)."""
    stored: dict[str, Any] = json.loads(json.dumps(asdict(job.extract), default=list))
    return stored


@dataclass(frozen=True)
class Change:
    """The first setting that differs between an output's job and this one."""

    name: str  # as a user knows it: "[request] prompt", "[extract]"
    was: Any
    now: Any


def record_job_or_refuse(
    output_dir: Path,
    settings: Mapping[str, Any],
    extract: Mapping[str, Any],
    *,
    reparse: bool = False,
    input_path: InputPath | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """Refuse to mix two different jobs in one output directory; record the first.

    A changed [extract] is refused too unless `reparse`: stored answers would otherwise
    carry labels of two different extractions. Returns the manifest (job.json's content),
    which every part file carries as well, so a lost job.json can be rebuilt. `url`: the
    output the user named, when `output_dir` is its mirror (the refusal names it).
    """
    manifest = output_dir / MANIFEST
    stored = _read_manifest(manifest) if manifest.exists() else None
    content, source = _recorded(output_dir)
    if content is None:
        content = {"settings": dict(settings), "extract": dict(extract), "created_at": now_iso()}
        output_dir.mkdir(parents=True, exist_ok=True)
    elif stored is None:
        print(f"warning: {manifest} was missing: rebuilt from {source}", file=sys.stderr)
    content = _upgraded_input(content, settings, input_path)
    if content != stored:  # new, rebuilt, relabelled by a killed --reparse, or upgraded
        write_json(manifest, content)
    change = job_change(content, settings, extract, reparse=reparse)
    if change is not None:
        raise refusal(output_dir, change, url)
    return content


def check_job_change(
    output_dir: Path,
    settings: Mapping[str, Any],
    extract: Mapping[str, Any],
    *,
    input_path: InputPath | None = None,
    url: str | None = None,
) -> Change | None:
    """What `run` makes of an output directory, read only (so `estimate` says the same):
    None for a new output or the same job (a resume). A Change when the job changed and
    no row was answered: nothing paid would be mixed, so the run starts over (the earlier
    results set aside, as --fresh does). Raises the run's UsageError when the job changed
    and rows were answered."""
    content = recorded_manifest(output_dir)
    if content is None:
        return None
    content = _upgraded_input(content, settings, input_path)
    change = job_change(content, settings, extract)
    if change is None or nothing_answered(output_dir):
        return change
    raise refusal(output_dir, change, url)


def job_change(
    content: Mapping[str, Any],
    settings: Mapping[str, Any],
    extract: Mapping[str, Any],
    *,
    reparse: bool = False,
) -> Change | None:
    """The first request-shaping setting of `content` (job.json's) that `settings` differ
    in, else a changed [extract] (unless `reparse`, which applies it), else None."""
    recorded = content["settings"]
    for name in list(recorded) + [k for k in settings if k not in recorded]:
        if recorded.get(name) != settings.get(name):
            return Change(name, recorded.get(name), settings.get(name))
    if not reparse and content.get("extract", extract) != extract:
        return Change("[extract]", content.get("extract"), dict(extract))
    return None


def refusal(output_dir: Path, change: Change, url: str | None = None) -> UsageError:
    """The one-line refusal of a changed job, with what to do about it. `url`: the output
    the user named, when `output_dir` is its local mirror (where --fresh is refused)."""
    where = url or output_dir
    if change.name == "[extract]":  # --reparse needs no batch collected first
        return UsageError(
            f"{where}: [extract] changed since its answers were labelled; run with "
            "--reparse to relabel the stored answers (nothing is sent)"
            + ("" if url else ", or --fresh")
        )
    what = (
        f"{where} holds results of a different job: {change.name} changed since "
        f"(was {_short(change.was)}, now {_short(change.now)})"
    )
    own = "its own output URL" if url else "its own --output DIR"
    todo = f"to keep both, give this variant {own}" + (
        "; the earlier results stay where they are"
        if url
        else "; or run with --fresh to start over here (the old results are moved aside, "
        "not deleted)"
    )
    pending = len(BatchBook(output_dir).pending())
    if pending:  # --fresh is refused while they run: their answers would be lost to the job
        todo = (
            f"{pending} batch(es) of the earlier job are not collected yet: collect them "
            "first by running the earlier job again, as it was, with --batch (`pipeline "
            f"cancel {where}` first stops them early; that run then collects what they "
            f"finished), then "
            + (f"give this one {own}" if url else f"run this one with --fresh; or give it {own}")
        )
    return UsageError(f"{what}; {todo}")


def nothing_answered(output_dir: Path) -> bool:
    """No row of the output holds an answer: every outcome recorded is an error (which
    costs nothing) and no batch is outstanding. A part that cannot be read counts as
    answered: what it holds is unknown."""
    if BatchBook(output_dir).pending():
        return False
    # a --ray run's shards hold answers too, paid for, not yet taken into parts/
    return not any(_answered_here(d) for d in [output_dir, *shard_dirs(output_dir)])


def _answered_here(directory: Path) -> bool:
    """A part or a journal of `directory` holds an `ok` row (or cannot be read)."""
    try:
        for part in part_files(directory):
            statuses = read_part(part, ["status"]).column(0).to_pylist()
            if "ok" in statuses:
                return True
    except (OSError, pa.ArrowException):
        return True
    journals = [*directory.glob(SEALED_GLOB), directory / LIVE]
    return any(_answered_in(journal) for journal in journals if journal.exists())


def _answered_in(journal: Path) -> bool:
    """A journal holds an `ok` row: the key as orjson writes it (inside a JSON string a
    quote is escaped, so a response's text cannot match), torn last record included."""
    with journal.open("rb") as file:
        return any(b'"status":"ok"' in line for line in file)


def recorded_manifest(output_dir: Path) -> dict[str, Any] | None:
    """What job made the results of `output_dir` (read only): job.json (its [extract]
    from the newest part when a killed --reparse wrote that part and not job.json), or,
    job.json lost, the newest part's copy; None when the directory holds no results."""
    return _recorded(output_dir)[0]


def _recorded(output_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """`recorded_manifest`, and the name of the file it comes from."""
    manifest = output_dir / MANIFEST
    if manifest.exists():
        return _labels_of_the_newest_part(output_dir, _read_manifest(manifest)), MANIFEST
    parts = part_files(output_dir)
    journals = [p for p in output_dir.glob(f"{JOURNAL_PREFIX}*") if p.stat().st_size > 0]
    if not parts and not journals:
        return None, ""
    for part in reversed(parts):
        content = _part_manifest(part)
        if content is not None:
            return content, part.name
    raise UsageError(
        f"{output_dir / MANIFEST} is missing, and the results beside it do not say which "
        "job made them: restore job.json, or run with --fresh (the old results are "
        "moved aside, not deleted)"
    )


def _upgraded_input(
    content: dict[str, Any], settings: Mapping[str, Any], input_path: InputPath | None
) -> dict[str, Any]:
    """An output of an earlier version records a sampled input identity: accepted when
    the sample still matches (that version could not tell more), and upgraded to the
    whole content's, so that from then on the whole content is checked."""
    recorded = content["settings"]
    single = input_path is not None and is_single_file(input_path)
    if not single or not _same_legacy_input(recorded, settings, Path(input_path or "")):
        return content
    return {**content, "settings": {**recorded, INPUT_CONTENT: settings[INPUT_CONTENT]}}


def _labels_of_the_newest_part(output_dir: Path, content: dict[str, Any]) -> dict[str, Any]:
    """A --reparse killed after writing its part but before job.json: the newest part says
    which [extract] its labels follow (record_job_or_refuse brings job.json in line with it)."""
    parts = part_files(output_dir)
    newest = _part_manifest(parts[-1]) if parts else None
    if newest is None or newest["settings"] != content["settings"]:
        return content
    if newest.get("extract") == content.get("extract"):
        return content
    return {**content, "extract": newest.get("extract")}


def part_labelling(part: Path) -> Any:
    """The [extract] a part's labels follow, as its metadata says (None: not said)."""
    content = _part_manifest(part)
    return None if content is None else content.get("extract")


def _part_manifest(part: Path) -> dict[str, Any] | None:
    """The job.json content a part carries in its metadata (None: none, or unreadable)."""
    try:
        stored = (pq.read_metadata(part).metadata or {}).get(MANIFEST_KEY)
        content = json.loads(stored) if stored else None
    except (OSError, ValueError, pa.ArrowException):
        return None  # a damaged part: the checks that follow name it
    if isinstance(content, dict) and isinstance(content.get("settings"), dict):
        return content
    return None


def _read_manifest(manifest: Path) -> dict[str, Any]:
    try:
        content = json.loads(manifest.read_text(encoding="utf-8"))
        if not isinstance(content, dict) or not isinstance(content["settings"], dict):
            raise TypeError("no settings table")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(
            f"{manifest}: unreadable ({e}); use --fresh to start over "
            "(the old results are kept aside)"
        ) from None
    return content


def _same_legacy_input(
    recorded: Mapping[str, Any], settings: Mapping[str, Any], path: Path
) -> bool:
    """An output of an earlier version records a sampled input identity: accept it when
    the sample still matches (that version could not tell more), and upgrade the record."""
    old = recorded.get(INPUT_CONTENT)
    return (
        isinstance(old, str)
        and " sha256 sample " in old
        and old != settings.get(INPUT_CONTENT)
        and old == _legacy_identity(path)
    )


def relabelled_manifest(output_dir: Path, extract: Mapping[str, Any]) -> dict[str, Any]:
    """job.json's content once --reparse has applied `extract` (not written yet)."""
    return {**_read_manifest(output_dir / MANIFEST), "extract": dict(extract)}


def record_labelling(output_dir: Path, content: Mapping[str, Any]) -> None:
    """After --reparse: the stored labels now follow the manifest's [extract]."""
    write_json(output_dir / MANIFEST, content)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    """`content` as indented JSON, written atomically (durable.py)."""
    text = json.dumps(content, indent=2, ensure_ascii=False) + "\n"
    durable.write_bytes(path, text.encode("utf-8"))
