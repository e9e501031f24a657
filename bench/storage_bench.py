"""Object storage figures (issue 26): 200,000 rows from a prefix of 20 Parquet files to an
output URL, on an S3-compatible server on loopback (moto's server mode, the dev extra),
beside the same job on local disk; each a `pipeline run` child against one simulator.
Printed: rows/s and peak RSS of each, and that both hold every row."""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bench.common import make_job, run_measured, s3_server
from pipeline.simulator.process import SimulatorProcess

ROWS, FILES = 200_000, 20
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def write_inputs(directory: Path, endpoint: str) -> None:
    """The same 200,000 rows as make_job's input, as 20 files in a bucket's prefix."""
    frame = pl.read_parquet(directory / "in.parquet")
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", allow_bucket_creation=True,
        access_key="bench", secret_key="bench-secret", region="us-east-1",
    )  # fmt: skip
    fs.create_dir("bench")
    size = ROWS // FILES
    for i in range(FILES):
        table: pa.Table = frame.slice(i * size, size).to_arrow()
        pq.write_table(table, f"bench/in/part-{i:03d}.parquet", filesystem=fs)


def main() -> None:
    with s3_server() as endpoint, tempfile.TemporaryDirectory() as tmp, SimulatorProcess() as sim:
        env = {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
        directory = Path(tmp)
        local = make_job(directory, ROWS, 64)
        write_inputs(directory, endpoint)
        text = local.read_text()
        text = text.replace(f'input = "{directory / "in.parquet"}"', 'input = "s3://bench/in/"')
        text = text.replace(f'output = "{directory / "out"}"', 'output = "s3://bench/out"')
        remote = directory / "remote.toml"
        remote.write_text(text)
        on_disk = run_measured(local, sim.base_url)
        env["PIPELINE_MIRRORS"] = str(directory / "mirrors")
        in_s3 = run_measured(remote, sim.base_url, env)
        options = {"aws_endpoint_url": endpoint, **{k.lower(): v for k, v in CREDENTIALS.items()}}
        held = pl.read_parquet("s3://bench/out/results.parquet", storage_options=options).height
    print(f"storage local disk: {on_disk.line(ROWS)}", flush=True)
    print(
        f"storage s3 prefix of {FILES} files -> output URL: {in_s3.line(ROWS)}; "
        f"{held:,} rows at the URL",
        flush=True,
    )


if __name__ == "__main__":
    main()
