"""The adversarial sweep, storage side: cells as written, any input change detected, values
that do not fit never poison a job, damaged parts named before anything is paid, and the
output's bookkeeping files survive being lost or torn. Each runs the real CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import orjson
import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline.simulator.process import SimulatorProcess
from tests.e2e import label_job

PROMPT = "Review: {}\nAnswer with one word: positive, negative or neutral."


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def run(cli, job: Path, sim: SimulatorProcess, *extra: str):
    return cli("run", str(job), "--base-url", sim.base_url, "--no-progress", *extra)


def results(tmp_path: Path) -> pl.DataFrame:
    return pl.read_parquet(tmp_path / "out" / "results.parquet")


# Every column parses as numbers (or booleans): a reader that guesses types alters them all.
IDS = ["007", "0049301234", "1", "1.0", "123456789012345678901234567890", "1e3", "-0", "00"]
CELLS = ["007", "1.50", "1e3", "02134", "1.0", "-0", "10", "2.50"]
FLAGS = ["true", "FALSE", "True", "false", "true", "false", "TRUE", "False"]


def test_csv_cells_are_sent_stored_and_kept_exactly_as_written(tmp_path, sim, cli):
    lines = ["id,text,flag"] + [
        f"{i},{c},{f}" for i, c, f in zip(IDS, CELLS, FLAGS, strict=True)
    ]  # written by hand: no CSV writer may normalise what the user typed
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = label_job(tmp_path, tmp_path / "in.csv", job={"keep_columns": ["text", "flag"]})
    sim.reset()
    done = run(cli, job, sim)
    assert done.returncode == 0, done.stderr
    out = results(tmp_path)
    assert out["id"].to_list() == IDS  # "1" and "1.0" are two rows, not duplicates
    assert out["text"].to_list() == CELLS and out["flag"].to_list() == FLAGS
    assert out.schema["id"] == pl.String and out.schema["flag"] == pl.String
    sent = sorted(entry["prompt_sha256"] for entry in sim.ledger())
    assert sent == sorted(sha(PROMPT.format(cell)) for cell in CELLS)


def test_jsonl_strings_stay_strings_and_huge_integers_travel_as_text(tmp_path, sim, cli):
    rows = [
        {"id": "007", "text": "1.50", "n": 12000000000000000000},
        {"id": "1.0", "text": "true", "n": -5},
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    job = label_job(tmp_path, path, job={"keep_columns": ["text", "n"]})
    done = run(cli, job, sim)
    assert done.returncode == 0, done.stderr
    out = results(tmp_path)
    assert out["id"].to_list() == ["007", "1.0"] and out["text"].to_list() == ["1.50", "true"]
    assert out["n"].to_list() == ["12000000000000000000", "-5"]


def big_input(path: Path, rows: int) -> list[str]:
    texts = [f"row {i:06d}: {'it works and I like it' if i % 3 else 'it broke'} " + "x" * 80
             for i in range(rows)]  # fmt: skip
    lines = ["id,text"] + [f"k{i:06d},{t}" for i, t in enumerate(texts)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def test_a_same_size_swap_in_the_middle_of_a_big_input_is_refused(tmp_path, sim, cli):
    path = tmp_path / "in.csv"
    lines = big_input(path, 30_000)
    assert path.stat().st_size > 3 * 2**20  # the middle is beyond any sampled first/last MiB
    job = label_job(tmp_path, path, limits={"concurrency": 32})
    assert run(cli, job, sim, "--limit", "50").returncode == 0
    middle = len(lines) // 2
    lines[middle], lines[middle + 1] = lines[middle + 1], lines[middle]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    sim.reset()
    again = run(cli, job, sim)
    assert again.returncode == 2
    assert "the input file's content changed" in again.stderr
    assert sim.stats()["requests"] == 0


def test_an_earlier_versions_sampled_input_identity_is_accepted_then_upgraded(tmp_path, sim, cli):
    from pipeline.store.checkpoint import _legacy_identity

    path = tmp_path / "in.csv"
    big_input(path, 200)
    job = label_job(tmp_path, path)
    assert run(cli, job, sim, "--limit", "10").returncode == 0
    manifest = tmp_path / "out" / "job.json"
    content = json.loads(manifest.read_text())
    content["settings"]["the input file's content"] = _legacy_identity(path)
    manifest.write_text(json.dumps(content))
    sim.reset()
    assert run(cli, job, sim).returncode == 0
    assert sim.stats()["requests"] == 190  # the 10 done rows were not paid again
    upgraded = json.loads(manifest.read_text())["settings"]["the input file's content"]
    assert " sha256 sample " not in upgraded and len(upgraded.split()[-1]) == 64


def json_job(tmp_path: Path, replies: list[str]) -> Path:
    texts = [f"case {i} [[sim:reply={reply}]]" for i, reply in enumerate(replies)]
    pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).write_csv(
        tmp_path / "in.csv"
    )
    return label_job(
        tmp_path,
        tmp_path / "in.csv",
        request={"prompt": "{text}"},
        extract={"kind": "json", "fields": {"n": "integer"}},
    )


def test_integers_beyond_64_bits_are_invalid_labels_not_a_stuck_job(tmp_path, sim, cli):
    replies = ['{"n": 1e20}', '{"n": 12000000000000000000}', '{"n": 7}', '{"n": -1e19}']
    job = json_job(tmp_path, replies)
    sim.reset()
    done = run(cli, job, sim)
    assert done.returncode == 0, done.stderr
    out = results(tmp_path)
    assert out["status"].to_list() == ["ok"] * 4
    assert out["label_status"].to_list() == ["invalid", "invalid", "ok", "invalid"]
    assert out["n"].to_list() == [None, None, 7, None]
    assert "64-bit" in out["label_error"][1] and "exact integer" in out["label_error"][0]
    sim.reset()
    assert run(cli, job, sim).returncode == 0 and sim.stats()["requests"] == 0  # never re-paid


def test_a_journal_record_that_cannot_fit_its_column_is_folded_not_fatal(tmp_path, sim, cli):
    """A journal left by an earlier version holds an integer no int64 column takes."""
    job = json_job(tmp_path, ['{"n": 1}', '{"n": 2}'])
    assert run(cli, job, sim, "--limit", "1").returncode == 0
    part = next((tmp_path / "out" / "parts").glob("part-*.parquet"))
    record = pq.read_table(part).to_pylist()[0]
    record.update({"_row": 1, "id": "r1", "n": 12000000000000000000})
    record["finished_at"] = int(record["finished_at"].timestamp() * 1e6)
    journal = tmp_path / "out" / "journal.jsonl"
    journal.write_bytes(orjson.dumps(record) + b"\n")
    sim.reset()
    done = run(cli, job, sim)
    assert done.returncode == 0, done.stderr
    assert sim.stats()["requests"] == 0  # the paid answer in the journal was kept
    row = results(tmp_path).row(1, named=True)
    assert row["status"] == "ok" and row["n"] is None and row["label_status"] == "invalid"
    assert "does not fit" in row["label_error"]


def finished_job(cli, tmp_path: Path, sim, rows: int = 40) -> Path:
    texts = [f"row {i}: works well" for i in range(rows)]
    pl.DataFrame({"id": [f"k{i:03d}" for i in range(rows)], "text": texts}).write_csv(
        tmp_path / "in.csv"
    )
    job = label_job(tmp_path, tmp_path / "in.csv")
    for limit in (10, 25, rows):  # three runs: three part files
        assert run(cli, job, sim, "--limit", str(limit)).returncode == 0
    return job


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 3
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("results_file", ["kept", "lost"])
@pytest.mark.parametrize("damage", ["empty", "flipped"])
def test_a_damaged_part_is_named_before_anything_is_sent(tmp_path, sim, damage, results_file, cli):
    job = finished_job(cli, tmp_path, sim)
    parts = sorted((tmp_path / "out" / "parts").glob("part-*.parquet"))
    assert len(parts) == 3
    rows_in_second = pq.read_metadata(parts[1]).num_rows
    before = results(tmp_path)
    if damage == "empty":
        parts[1].write_bytes(b"")
    else:
        flip_bytes(parts[1])
    if results_file == "lost":
        (tmp_path / "out" / "results.parquet").unlink()
    sim.reset()
    refused = run(cli, job, sim)
    assert refused.returncode == 2
    message = refused.stderr.strip().splitlines()[-1]
    assert parts[1].name in message and "--set-aside-damaged" in message
    assert sim.stats()["requests"] == 0
    status = cli("status", str(tmp_path / "out"))
    assert status.returncode == 0 and "damaged:" in status.stdout
    recovered = run(cli, job, sim, "--set-aside-damaged")
    assert recovered.returncode == 0, recovered.stderr
    # its rows come back from results.parquet when it holds them whole; else only they
    # are sent again
    assert sim.stats()["requests"] == (0 if results_file == "kept" else rows_in_second)
    assert (tmp_path / "out" / "damaged" / parts[1].name).exists()  # kept, not deleted
    out = results(tmp_path)
    assert out["id"].to_list() == [f"k{i:03d}" for i in range(40)]
    assert out["status"].unique().to_list() == ["ok"]
    if results_file == "kept":  # the very answers that were paid for, not new ones
        assert out["request_id"].to_list() == before["request_id"].to_list()


def test_a_lost_job_json_is_rebuilt_from_the_parts_and_still_guards(tmp_path, sim, cli):
    job = finished_job(cli, tmp_path, sim)
    manifest = tmp_path / "out" / "job.json"
    original = json.loads(manifest.read_text())
    manifest.unlink()
    changed = label_job(
        tmp_path, tmp_path / "in.csv", request={"prompt": "Other: {text}"}
    )  # same job file path: now a different prompt
    refused = run(cli, changed, sim)
    assert refused.returncode == 2 and "[request] prompt changed" in refused.stderr
    assert "rebuilt from part-" in refused.stderr
    assert json.loads(manifest.read_text())["settings"] == original["settings"]
    label_job(tmp_path, tmp_path / "in.csv")  # the job as it was
    sim.reset()
    assert run(cli, job, sim).returncode == 0 and sim.stats()["requests"] == 0


def test_a_lost_job_json_without_metadata_in_the_parts_is_refused(tmp_path, sim, cli):
    job = finished_job(cli, tmp_path, sim)
    for part in (tmp_path / "out" / "parts").glob("part-*.parquet"):
        pl.read_parquet(part).write_parquet(part)  # rewritten by another tool: no metadata
    (tmp_path / "out" / "job.json").unlink()
    sim.reset()
    refused = run(cli, job, sim)
    assert refused.returncode == 2 and "job.json is missing" in refused.stderr
    assert sim.stats()["requests"] == 0


def test_status_reads_a_truncated_run_json(tmp_path, sim, cli):
    finished_job(cli, tmp_path, sim)
    record = tmp_path / "out" / "run.json"
    record.write_text(record.read_text()[:25])
    status = cli("status", str(tmp_path / "out"))
    assert status.returncode == 0, status.stderr
    assert "40 ok" in status.stdout and "unreadable" in status.stderr


def test_a_header_only_csv_gives_an_empty_results_file_with_every_column(tmp_path, sim, cli):
    (tmp_path / "in.csv").write_text("id,text\n", encoding="utf-8")
    job = label_job(tmp_path, tmp_path / "in.csv")
    done = run(cli, job, sim)
    assert done.returncode == 0, done.stderr
    out = results(tmp_path)
    assert out.height == 0
    assert {"id", "text", "status", "cost_usd", "label", "label_status"} <= set(out.columns)
