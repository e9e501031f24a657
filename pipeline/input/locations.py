"""Where the input is. `[job] input` may be one local file (read as it always was), a local
directory or glob, or a URL: `s3://bucket/prefix/` (every file under it),
`s3://bucket/prefix/*.parquet` (a glob: `*` may cross `/`), `s3://bucket/key.csv`, and any
scheme pyarrow's filesystems serve (credentials and endpoint from the environment only:
AWS_* variables, AWS_ENDPOINT_URL for an S3-compatible store; never written anywhere).

The files are read in the order of their names, as one input: a row's position is its
place in that order (stable while the files are: the input's identity covers every file's
name, size and content digest, so any change is refused as a changed file is). Files whose
name starts with `_` or `.` (_SUCCESS, .crc) are not input. Directories named `key=value`
between the base and a file (Hive partitions) become string columns of its rows.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import polars as pl
import pyarrow.fs as pafs

from pipeline import ahead
from pipeline.errors import InputError
from pipeline.job.model import InputPath as InputPath

GLOB = frozenset("*?[")
FILE_COLUMN = "__input_file"
FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CHUNK = 1 << 20


def ahead_key(what: str, path: InputPath, *asked: Hashable) -> Hashable | None:
    """The key (pipeline.ahead) of work `what` about the input at `path`, when that is one
    local file; None for a directory, glob or URL: a key of one file's identity would not
    see the others change."""
    if not is_single_file(path):
        return None
    assert isinstance(path, Path)
    return ahead.file_key(what, path, *asked)


def is_single_file(path: InputPath) -> bool:
    """One local file named as such: read exactly as before there were other kinds."""
    return isinstance(path, Path) and not GLOB & set(str(path)) and not path.is_dir()


@dataclass(frozen=True)
class InputFile:
    name: str  # relative to the base: what the identity and the partitions come from
    path: str  # as polars reads it: a local path or a URL
    size: int

    def partitions(self) -> dict[str, str]:
        parts = PurePosixPath(self.name).parts[:-1]
        return dict(p.split("=", 1) for p in parts if "=" in p and not p.startswith("="))


@dataclass(frozen=True)
class InputFiles:
    """The files of a directory, glob or URL input, in name order."""

    where: str
    files: tuple[InputFile, ...]
    kind: str  # csv, parquet, jsonl
    filesystem: pafs.FileSystem

    def scan(self) -> pl.LazyFrame:
        paths = [f.path for f in self.files]
        if self.kind == "csv":
            frame = pl.scan_csv(paths, infer_schema=False, include_file_paths=FILE_COLUMN)
        elif self.kind == "parquet":
            frame = pl.scan_parquet(paths, hive_partitioning=False, include_file_paths=FILE_COLUMN)
        else:
            frame = pl.scan_ndjson(paths, infer_schema_length=None, include_file_paths=FILE_COLUMN)
        keys = sorted({k for f in self.files for k in f.partitions()})
        clash = set(keys) & set(frame.collect_schema().names()) if keys else set()
        if clash:
            raise InputError(
                f"{self.where}: the partition {sorted(clash)[0]!r} (a key=value directory) is "
                "also a column of its files; rename one"
            )
        by_file = {f.path: f.partitions() for f in self.files}
        columns = [
            pl.col(FILE_COLUMN)
            .replace_strict({p: v.get(key) for p, v in by_file.items()}, return_dtype=pl.String)
            .alias(key)
            for key in keys
        ]
        return frame.with_columns(columns).drop(FILE_COLUMN)

    def identity(self) -> str:
        """Every file's name, size and sha256, as one digest (the whole input is read)."""
        listing = hashlib.sha256()
        for file in self.files:
            content = hashlib.sha256()
            with self.filesystem.open_input_stream(_fs_path(file.path)) as stream:
                while chunk := stream.read(CHUNK):
                    content.update(chunk)
            listing.update(f"{file.name}\0{file.size}\0{content.hexdigest()}\n".encode())
        size = sum(f.size for f in self.files)
        return f"{len(self.files)} files, {size} bytes, sha256 {listing.hexdigest()}"


def find_files(where: InputPath) -> InputFiles:
    """The input's files (InputError, one line, when there are none or they differ in
    format)."""
    text = str(where)
    try:
        filesystem, base, pattern = _split(text)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        infos = [i for i in filesystem.get_file_info(selector) if i.type == pafs.FileType.File]
    except (OSError, ValueError) as e:
        raise InputError(f"{text}: cannot list input: {str(e).splitlines()[0]}") from None
    files = []
    for info in sorted(infos, key=lambda i: i.path):
        name = info.path[len(base) :].lstrip("/")
        hidden = any(part[:1] in "_." for part in PurePosixPath(name).parts)
        if hidden or (pattern and not fnmatch.fnmatchcase(name, pattern)):
            continue
        files.append(InputFile(name, _read_path(text, info.path), int(info.size or 0)))
    return InputFiles(text, tuple(files), _kind(text, files), filesystem)


def _split(text: str) -> tuple[pafs.FileSystem, str, str | None]:
    """(filesystem, base directory, glob pattern relative to it or None)."""
    url = "://" in text
    scheme, rest = text.split("://", 1) if url else ("", str(Path(text).absolute()))
    parts = PurePosixPath(rest).parts
    glob_at = next((i for i, part in enumerate(parts) if GLOB & set(part)), None)
    fixed = rest if glob_at is None else str(PurePosixPath(*parts[:glob_at]))
    pattern = None if glob_at is None else "/".join(parts[glob_at:])
    if url:
        filesystem, base = pafs.FileSystem.from_uri(f"{scheme}://{fixed}")
    else:
        filesystem, base = pafs.LocalFileSystem(), fixed
    if pattern is None and filesystem.get_file_info(base).type == pafs.FileType.File:
        return filesystem, str(PurePosixPath(base).parent), PurePosixPath(base).name
    return filesystem, base.rstrip("/"), pattern


def _read_path(text: str, found: str) -> str:
    """How polars names a file the filesystem listed: a local path, or scheme://path."""
    return found if "://" not in text else f"{text.split('://', 1)[0]}://{found}"


def _fs_path(path: str) -> str:
    return path.split("://", 1)[1] if "://" in path else path


def _kind(text: str, files: list[InputFile]) -> str:
    if not files:
        raise InputError(f"{text}: no input files there (.csv, .parquet, .jsonl or .ndjson)")
    kinds = {FORMATS.get(PurePosixPath(f.name).suffix.lower()) for f in files}
    if None in kinds:
        odd = next(f.name for f in files if PurePosixPath(f.name).suffix.lower() not in FORMATS)
        raise InputError(f"{text}: {odd} is not .csv, .parquet, .jsonl or .ndjson")
    if len(kinds) > 1:
        found = ", ".join(sorted(k or "" for k in kinds))
        raise InputError(f"{text}: files of more than one format ({found}); one input is one")
    return str(kinds.pop())
