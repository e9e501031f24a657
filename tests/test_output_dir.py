"""The output directory is checked before anything is created or moved there: never a
filesystem root, the home directory, a file, a path under a file or a directory holding
the input; with --fresh never one holding the job file, the current directory or files
that are not a pipeline output."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.errors import UsageError
from pipeline.job.load import job_from_dict
from pipeline.job.model import Job
from pipeline.store.output_dir import check_output_dir


def job_for(output: Path | str, input_path: Path, source: Path | None = None) -> Job:
    raw = {
        "job": {"input": str(input_path), "output": str(output)},
        "request": {"model": "m", "max_tokens": 8, "prompt": "{text}"},
    }
    return replace(job_from_dict(raw), source_file=source)


@pytest.fixture
def area(tmp_path: Path) -> Path:
    (tmp_path / "in.csv").write_text("id,text\n1,a\n")
    (tmp_path / "a_file").write_text("keep me")
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def refused(job: Job, *, fresh: bool = False) -> str:
    with pytest.raises(UsageError) as info:
        check_output_dir(job, fresh=fresh)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    return message


@pytest.mark.parametrize("output", ["/", "//", "/tmp/..", "/./", "/../.."])
def test_a_filesystem_root_is_refused(area: Path, output: str) -> None:
    assert "is a filesystem root" in refused(job_for(output, area / "in.csv"))


def test_a_symlink_to_the_root_or_dotdots_up_to_it_are_refused(area: Path) -> None:
    (area / "to_root").symlink_to("/")
    assert "filesystem root" in refused(job_for(area / "to_root", area / "in.csv"))
    up = "/".join([".."] * (len(area.parts) + 2))
    assert "filesystem root" in refused(job_for(area / up, area / "in.csv"))


def test_the_home_directory_is_refused(area: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(area / "elsewhere"))
    assert "home directory" in refused(job_for(area / "elsewhere", area / "in.csv"))
    check_output_dir(job_for(area / "elsewhere" / "out", area / "in.csv"))  # below it: fine


@pytest.mark.parametrize(
    ("output", "part"),
    [
        ("a_file", "is an existing file, not a directory"),
        ("a_file/out", "'{area}/a_file' is a file"),
        ("a_file/../out", "'{area}/a_file' is a file"),  # the kernel refuses it too
        ("a_file/x/y/z", "'{area}/a_file' is a file"),
        ("in.csv", "is an existing file"),
        ("dangling", "is a broken symlink"),
        ("link_to_file/out", "link_to_file' is a file"),
        ("x" * 300, "longer than 255 bytes"),
    ],
)
def test_a_file_or_a_path_through_a_file_is_refused(area: Path, output: str, part: str) -> None:
    (area / "dangling").symlink_to(area / "nowhere")
    (area / "link_to_file").symlink_to(area / "a_file")
    message = refused(job_for(area / output, area / "in.csv"))
    assert part.format(area=area) in message, message
    assert (area / "a_file").read_text() == "keep me"
    assert not (area / "nowhere").exists() and not (area / "out").exists()


@pytest.mark.parametrize("relative", [".", "sub/..", ""])
def test_a_directory_holding_the_input_is_refused(area: Path, relative: str) -> None:
    output = area / relative if relative else area
    message = refused(job_for(output, area / "in.csv"))
    assert "holds the input file" in message and "in.csv" in message


def test_the_input_reached_through_a_symlinked_output_is_refused(area: Path) -> None:
    (area / "alias").symlink_to(area)
    (area / "deep").mkdir()
    (area / "deep" / "in.parquet").write_bytes(b"x")
    assert "holds the input" in refused(job_for(area / "alias", area / "in.csv"))
    assert "holds the input" in refused(job_for(area, area / "deep" / "in.parquet"))


def test_fresh_refuses_to_move_the_job_file_the_cwd_or_foreign_files(
    area: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = area / "out"
    out.mkdir()
    (out / "job.toml").write_text("")
    job = job_for(out, area / "in.csv", source=out / "job.toml")
    check_output_dir(job)  # a run without --fresh moves nothing: it may use it
    assert "holds the job file" in refused(job, fresh=True)
    (out / "job.toml").rename(out / "notes.txt")
    job = job_for(out, area / "in.csv")
    assert "not a pipeline output ('notes.txt'" in refused(job, fresh=True)
    monkeypatch.chdir(out)
    assert "holds the current directory" in refused(job, fresh=True)


@pytest.mark.parametrize("marker", [".lock", "job.json", "parts", "journal.jsonl"])
def test_fresh_may_move_an_earlier_pipeline_output(area: Path, marker: str) -> None:
    out = area / "out"
    out.mkdir()
    if marker == "parts":
        (out / marker).mkdir()
    else:
        (out / marker).write_text("")
    (out / "extra_user_note.txt").write_text("")
    check_output_dir(job_for(out, area / "in.csv"), fresh=True)


@pytest.mark.parametrize(
    "output", ["out", "elsewhere", "elsewhere/new/deeper", "elsewhere/../out2", "link_to_dir"]
)
def test_ordinary_outputs_are_accepted_and_nothing_is_created(area: Path, output: str) -> None:
    (area / "link_to_dir").symlink_to(area / "elsewhere")
    before = sorted(os.listdir(area)), sorted(os.listdir(area / "elsewhere"))
    check_output_dir(job_for(area / output, area / "in.csv"), fresh=True)
    assert (sorted(os.listdir(area)), sorted(os.listdir(area / "elsewhere"))) == before


def test_an_input_symlink_inside_the_output_is_refused_too(area: Path) -> None:
    out = area / "out"
    out.mkdir()
    (out / "in.csv").symlink_to(area / "in.csv")  # the data lies outside, the name inside
    assert "holds the input file" in refused(job_for(out, out / "in.csv"))
