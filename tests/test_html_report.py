"""The HTML report opened in a real headless browser (Debian's chromium): the charts render."""

from __future__ import annotations

import html
import json
import shutil
import subprocess

import polars as pl
import pytest

from pipeline.simulator.process import SimulatorProcess
from tests.e2e import label_job, run_cli
from tests.test_run_e2e import reviews

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_html_report_charts_render_in_headless_chromium(tmp_path):
    reviews(tmp_path / "in.csv", 60)
    job = label_job(tmp_path, tmp_path / "in.csv")
    with SimulatorProcess(latency_ms=5, latency_jitter_ms=4) as sim:
        assert run_cli("run", str(job), "--base-url", sim.base_url).returncode == 0
    page = tmp_path / "report.html"
    done = run_cli("report", str(tmp_path / "out"), "--by", "label", "--html", str(page))
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # nothing to fetch: self-contained
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    marker = dom.split('data-charts="', 1)[1].split('"', 1)[0]
    charts = json.loads(html.unescape(marker))
    assert len(charts) == 4  # cost by group, cumulative cost, tokens, latency percentiles
    assert all(chart["width"] > 0 and chart["marks"] > 0 for chart in charts), charts
    labels = pl.read_parquet(tmp_path / "out" / "results.parquet")["label"].n_unique()
    assert charts[0]["marks"] == labels  # one bar a group
    assert charts[3]["marks"] == 4  # p50, p90, p95, p99
