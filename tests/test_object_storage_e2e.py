"""Inputs and outputs in object storage, against a real S3-compatible server started here on
loopback (moto's server mode, a process of its own), never a mock of the client: a prefix
of Hive-partitioned Parquet files in, an output URL out, a resume from another machine's
(empty) mirror, a changed object refused, one run at a time, kill -9 with the machine lost,
and the credentials in no file and no message."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from bench.common import s3_server as start_s3_server
from pipeline.simulator.process import SimulatorProcess
from pipeline.store.remote import Replica
from tests.e2e import REPO, start_cli, wait_for, write_job

SECRET = "s3cr3t-NEVER-WRITE-ME-4242"  # a distinctive secret key, to look for everywhere
TEXTS = ["great value", "broke in a day", "it is a chair", "love it", "awful", "fine"]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """moto's S3 server on a free loopback port, for this module."""
    with start_s3_server() as url:
        yield url


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """This test's bucket and the environment that reaches it (credentials from the
    environment only); mirrors under tmp_path."""
    env = {
        "AWS_ACCESS_KEY_ID": "AKIATESTKEY",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
        "PIPELINE_MIRRORS": str(tmp_path / "mirrors"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"b{abs(hash(tmp_path)) % 10**9}"
    filesystem = pafs.S3FileSystem(
        endpoint_override=s3_server, scheme="http", allow_bucket_creation=True,
        access_key="AKIATESTKEY", secret_key=SECRET, region="us-east-1",
    )  # fmt: skip
    filesystem.create_dir(bucket)
    return {**env, "bucket": bucket}


def filesystem() -> pafs.FileSystem:
    return pafs.FileSystem.from_uri("s3://x")[0]


def put_reviews(bucket: str, rows: int = 6, files: int = 2) -> None:
    """`files` Parquet files of reviews, Hive-partitioned by region."""
    fs = filesystem()
    for f in range(files):
        ids = [f"r{f}-{i:04d}" for i in range(rows // files)]
        table = pa.table({"id": ids, "text": [TEXTS[i % len(TEXTS)] for i in range(len(ids))]})
        pq.write_table(table, f"{bucket}/reviews/region=r{f}/part-{f}.parquet", filesystem=fs)


def job(tmp_path: Path, bucket: str, base_url: str, **extra: Any) -> Path:
    return write_job(
        tmp_path,
        {
            "job": {
                "name": "s3", "input": f"s3://{bucket}/reviews/", "id_column": "id",
                "output": f"s3://{bucket}/out/labels", "keep_columns": ["region", "text"],
                **extra,
            },
            "api": {"base_url": base_url},
            "request": {
                "model": "claude-haiku-4-5-20251001", "max_tokens": 8,
                "prompt": "Review from {region}: {text}\nOne word: positive, negative or neutral.",
            },
            "limits": {"concurrency": 4},
            "extract": {"kind": "choice", "choices": ["positive", "negative", "neutral"]},
        },
    )  # fmt: skip


def wait_for_lease_to_expire(key: str) -> None:
    """Until the killed run's lease (3 x fold_s after its last renewal) has run out."""
    with filesystem().open_input_stream(key) as stream:
        expires = float(json.loads(stream.read())["expires"])
    while time.time() <= expires:
        time.sleep(min(0.2, max(0.0, expires - time.time()) + 0.01))


def ran_elsewhere(tmp_path: Path, cli: Any, sim: SimulatorProcess, bucket: str) -> Path:
    """A run to the end on 'another machine': its answers at the URL, its mirror gone."""
    put_reviews(bucket)
    path = job(tmp_path, bucket, sim.base_url)
    assert cli("run", str(path)).returncode == 0
    shutil.rmtree(tmp_path / "mirrors")
    return path


def remote_files(bucket: str) -> dict[str, bytes]:
    fs = filesystem()
    selector = pafs.FileSelector(f"{bucket}/out", recursive=True, allow_not_found=True)
    found = {}
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as stream:
                found[info.path] = stream.read()
    return found


def test_a_prefix_of_hive_parquet_to_an_output_url_resumes_on_another_machine(
    tmp_path: Path, sim: SimulatorProcess, cli: Any, s3: dict[str, str]
) -> None:
    put_reviews(s3["bucket"], rows=40, files=4)
    path = job(tmp_path, s3["bucket"], sim.base_url)
    done = cli("run", str(path))
    assert done.returncode == 0, done.stderr
    assert f"results: s3://{s3['bucket']}/out/labels/results.parquet" in done.stderr
    results = pl.read_parquet(f"s3://{s3['bucket']}/out/labels/results.parquet")
    assert results.height == 40 and len(sim.ledger()) == 40
    assert sorted(results["region"].unique()) == ["r0", "r1", "r2", "r3"]  # Hive columns
    assert results["id"].to_list() == sorted(results["id"].to_list())  # files in name order
    stored = remote_files(s3["bucket"])
    assert any("/parts/part-" in name for name in stored) and not any(
        "journal" in n for n in stored
    )
    for mirror in (tmp_path / "mirrors").iterdir():  # another machine: no mirror at all
        subprocess.run(["rm", "-rf", str(mirror)], check=True)
    again = cli("run", str(path))
    assert again.returncode == 0 and len(sim.ledger()) == 40, again.stderr  # nothing re-bought
    assert "40 from earlier runs" in again.stderr


def test_a_changed_input_object_is_refused(
    tmp_path: Path, sim: SimulatorProcess, cli: Any, s3: dict[str, str]
) -> None:
    put_reviews(s3["bucket"])
    path = job(tmp_path, s3["bucket"], sim.base_url)
    assert cli("run", str(path)).returncode == 0
    table = pa.table({"id": ["r0-0000"], "text": ["changed"]})
    pq.write_table(
        table, f"{s3['bucket']}/reviews/region=r0/part-0.parquet", filesystem=filesystem()
    )
    for command in ("run", "estimate"):
        refused = cli(command, str(path))
        assert refused.returncode == 2 and "input file's content changed since" in refused.stderr
        url = f"s3://{s3['bucket']}/out/labels"
        assert f"{url} holds results" in refused.stderr, refused.stderr  # not the mirror
        # what it can do here: not --fresh, which an output at a URL refuses
        assert "its own output URL" in refused.stderr and "--fresh" not in refused.stderr
    assert len(sim.ledger()) == 6


def test_one_run_at_a_time_on_an_output_url(
    tmp_path: Path, sim: SimulatorProcess, cli: Any, s3: dict[str, str]
) -> None:
    put_reviews(s3["bucket"])
    path = job(tmp_path, s3["bucket"], sim.base_url)
    other = Replica(f"s3://{s3['bucket']}/out/labels", tmp_path / "elsewhere")
    other.take_lease()  # another machine's run, alive
    refused = cli("run", str(path))
    assert refused.returncode == 2 and "another run holds it" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not sim.ledger()
    other.release_lease()
    assert cli("run", str(path)).returncode == 0


def test_the_credentials_are_in_no_file_and_no_message(
    tmp_path: Path, sim: SimulatorProcess, cli: Any, s3: dict[str, str]
) -> None:
    put_reviews(s3["bucket"])
    path = job(tmp_path, s3["bucket"], sim.base_url)
    said = cli("run", str(path))
    refused = cli("run", str(path), "--input", f"s3://{s3['bucket']}/nothing-here/")
    for text in (said.stdout, said.stderr, refused.stdout, refused.stderr):
        assert SECRET not in text and "AKIATESTKEY" not in text
    for name, content in remote_files(s3["bucket"]).items():
        assert SECRET.encode() not in content and b"AKIATESTKEY" not in content, name
    for file in (tmp_path / "mirrors").rglob("*"):
        if file.is_file():
            content = file.read_bytes()
            assert SECRET.encode() not in content and b"AKIATESTKEY" not in content, file


@pytest.mark.process
def test_kill_9_with_the_machine_lost_recharges_at_most_the_unfolded_answers(
    tmp_path: Path, s3: dict[str, str], session_sim: SimulatorProcess
) -> None:
    """Answers reach the URL as parts every fold_s; a run killed, its machine (mirror)
    lost, is resumed elsewhere: it re-buys exactly the answers not yet at the URL, and
    those were all paid for in the last few fold_s before the kill (slack for a loaded
    machine's slow folds and puts), never earlier."""
    put_reviews(s3["bucket"], rows=800, files=4)
    with session_sim.started_over(latency_ms=20) as sim:
        path = job(tmp_path, s3["bucket"], sim.base_url, fold_s=1)
        env = {k: v for k, v in s3.items() if k != "bucket"}
        run = start_cli(path, sim.base_url, env=env)
        parts_prefix = f"{s3['bucket']}/out/labels/parts/"
        deadline = time.monotonic() + 60
        while not any(n.startswith(parts_prefix) for n in remote_files(s3["bucket"])):
            assert run.poll() is None and time.monotonic() < deadline, "no part reached the URL"
            time.sleep(0.1)
        killed_at = time.time()
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        # what it had in flight is still answered, and billed, after the kill (20 ms)
        wait_for(lambda: sim.stats()["in_flight"] == 0, "the killed run's requests to end")
        first_run = sorted(entry["ts"] for entry in sim.ledger())
        assert len(first_run) < 800, "the run ended before the kill"
        subprocess.run(["rm", "-rf", str(tmp_path / "mirrors")], check=True)  # machine lost
        wait_for_lease_to_expire(f"{s3['bucket']}/out/labels/.lease")
        folded = pl.read_parquet(f"s3://{parts_prefix}").height  # what reached the URL
        resumed = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", str(path)], cwd=REPO, text=True,
            capture_output=True, env={**os.environ, **env, "AISA_API_KEY": "sk-test-key"},
            timeout=120,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        ledger = sim.ledger()
    recharged = len(ledger) - 800
    assert recharged == len(first_run) - folded  # exactly the answers not yet at the URL
    if recharged:  # the answers not folded are the newest: paid within the last folds
        assert first_run[-recharged] >= killed_at - 3 * 1.0
    results = pl.read_parquet(f"s3://{s3['bucket']}/out/labels/results.parquet")
    assert results.height == 800 and results["status"].unique().to_list() == ["ok"]


def test_report_and_status_read_an_output_url(
    tmp_path: Path, sim: SimulatorProcess, cli: Any, s3: dict[str, str]
) -> None:
    ran_elsewhere(tmp_path, cli, sim, s3["bucket"])
    url = f"s3://{s3['bucket']}/out/labels"
    status = cli("status", url)
    assert status.returncode == 0 and "6 total, 6 ok" in status.stdout, status.stderr
    report = cli("report", url, "--by", "region", "--format", "json")
    assert report.returncode == 0 and '"region": "r1"' in report.stdout, report.stderr


def test_estimate_counts_what_an_output_url_holds(
    tmp_path: Path, sim: SimulatorProcess, cli: Any, s3: dict[str, str]
) -> None:
    path = ran_elsewhere(tmp_path, cli, sim, s3["bucket"])
    estimated = cli("estimate", str(path))
    assert estimated.returncode == 0 and "6 rows, 6 done, 0 to send" in estimated.stdout


def test_run_prompt_reads_a_url_and_keeps_its_columns(
    tmp_path: Path, sim: SimulatorProcess, s3: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import run_prompt

    monkeypatch.chdir(tmp_path)
    put_reviews(s3["bucket"])
    labelled = run_prompt(
        f"s3://{s3['bucket']}/reviews/", "Review: {text}\nOne word: positive or negative.",
        model="claude-haiku-4-5-20251001", choices=["positive", "negative"], max_tokens=8,
        base_url=sim.base_url, api_key="sk-test-key", show_progress=False,
    )  # fmt: skip
    assert labelled.height == 6 and {"id", "text", "region", "label"} <= set(labelled.columns)


def test_an_output_url_that_cannot_be_reached_is_one_line_before_anything_is_sent(
    tmp_path: Path, sim: SimulatorProcess, cli: Any
) -> None:
    reviews = tmp_path / "reviews.csv"
    pl.DataFrame({"id": ["a", "b"], "region": ["n", "s"], "text": ["good", "bad"]}).write_csv(
        reviews
    )
    path = job(tmp_path, "no-such-bucket", sim.base_url)
    path.write_text(path.read_text().replace("s3://no-such-bucket/reviews/", str(reviews)))
    closed = {  # a port nothing listens on: refused at once, no network needed
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": SECRET, "PIPELINE_MIRRORS": str(tmp_path / "mirrors"),
    }  # fmt: skip
    done = cli("run", str(path), "--no-progress", env=closed)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("pipeline: output s3://no-such-bucket/out/labels: cannot reach it")
    assert "nothing was sent" in line and "internal error" not in line and SECRET not in line
    assert sim.ledger() == []


def test_a_url_with_credentials_in_it_is_refused_without_repeating_them(
    tmp_path: Path, sim: SimulatorProcess, cli: Any
) -> None:
    mirrors = tmp_path / "mirrors"
    for key in ("input", "output"):
        path = job(tmp_path, "b", sim.base_url)
        text = path.read_text()
        place = "s3://b/reviews/" if key == "input" else "s3://b/out/labels"
        path.write_text(text.replace(place, place.replace("s3://", f"s3://AKID:{SECRET}@")))
        done = cli("run", str(path), "--no-progress", env={"PIPELINE_MIRRORS": str(mirrors)})
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert "credentials in it" in line and SECRET not in line and "AKID" not in line
    assert not mirrors.exists() and sim.ledger() == []  # no directory named after it
