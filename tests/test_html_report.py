"""The HTML report opened in a real headless browser (Debian's chromium): the summary card,
the accuracy section's heatmap, axis ticks on every chart, and data rendered as text only."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from pipeline.reports.html_report import PAGE, write_html
from pipeline.schema import output_schema
from pipeline.store.layout import RESULTS_FILE
from tests.e2e import REPO, run_cli

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)"
)
HOSTILE = ("<script>alert(1)</script>", '"&<>')


def dump_dom(page: Path, profile: Path) -> Dom:
    assert CHROMIUM is not None
    dom = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--dump-dom", page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    parsed = Dom()
    parsed.feed(dom)
    return parsed


class Dom(HTMLParser):
    """What a test reads of the rendered page: script elements, every text node, each
    svg's tick labels (x, y), counts and notes, the heatmap's cells, <body>'s attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts = 0
        self.stack: list[tuple[str, str]] = []
        self.texts: list[str] = []
        self.svgs: list[dict[str, Any]] = []
        self.cells: list[dict[str, Any]] = []
        self.body: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a, classes = dict(attrs), (dict(attrs).get("class") or "").split()
        self.scripts += tag == "script"
        if tag == "body":
            self.body = a
        if tag == "svg":
            self.svgs.append({"kind": classes[0], "x": [], "y": [], "counts": [], "notes": []})
        if tag == "g" and "cell" in classes:
            self.cells.append({"gold": a["data-gold"], "predicted": a["data-predicted"]})
        self.stack.append((tag, " ".join(classes)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if not self.stack or self.stack[-1][0] != "text":
            return
        classes = [c for _, c in self.stack]
        own = classes[-1]
        if "tick x" in classes or "tick y" in classes:
            self.svgs[-1]["x" if "tick x" in classes else "y"].append(data)
        elif "cell" in classes and own == "count":
            self.cells[-1]["count"] = int(data.replace(",", ""))
        elif own in ("count", "note"):
            self.svgs[-1]["counts" if own == "count" else "notes"].append(data)

    @property
    def charts(self) -> list[dict[str, Any]]:
        return [svg for svg in self.svgs if svg["kind"] == "chart"]

    def text(self) -> str:
        return " ".join(" ".join(self.texts).split())


def tick_value(text: str) -> float:
    scale = {"k": 1e3, "M": 1e6}.get(text[-1], 1)
    return float(text.rstrip("kM").replace(",", "")) * scale


def assert_nice(texts: list[str]) -> None:
    """At least two ticks, evenly spaced by 1, 2 or 5 x 10^k."""
    values = [tick_value(t) for t in texts]
    assert len(values) >= 2, texts
    steps = {round(b - a, 9) for a, b in itertools.pairwise(values)}
    assert len(steps) == 1, texts
    step = steps.pop()
    assert round(step / 10 ** math.floor(math.log10(step)), 6) in (1, 2, 5), texts


def exact_cost(results: pl.DataFrame) -> Decimal:
    return sum((Decimal(repr(v)) for v in results["cost_usd"].drop_nulls()), Decimal(0))


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, Dom]:
    """The sample job, 240 of its 320 rows done, on the simulator; its page in chromium."""
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    tmp = tmp_path_factory.mktemp("sample")
    run = run_cli(
        "run", "jobs/label_reviews.toml", "--simulate", "--rpm", "30000", "--concurrency",
        "32", "--limit", "240", "--output", str(tmp / "out"), "--no-progress",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    page = tmp / "report.html"
    done = run_cli("report", str(tmp / "out"), "--by", "label", "--html", str(page))
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text and "<link" not in text and " src=" not in text
    return pl.read_parquet(tmp / "out" / RESULTS_FILE), dump_dom(page, tmp / "profile")


def test_summary_card_shows_the_job_rows_cost_and_projection(sample):
    results, dom = sample
    text = dom.text()
    total = exact_cost(results)
    projected = (total + total / 240 * 80).quantize(Decimal("0.000001"))
    first = results["finished_at"].min()
    for shown in (
        "label_reviews",
        "Rows 320",
        "240 ok \u00b7 0 error \u00b7 80 not done",
        f"Total cost ${total.normalize():f}",
        f"${(total / 240 * 1000).quantize(Decimal('0.000001'))} per 1,000 answered rows",
        f"Projected total ${projected}",
        "claude-haiku-4-5-20251001 (240 rows)",
        f"Time span {first:%Y-%m-%d %H:%M:%S} \u2192",
        "Prices anthropic-2025-11-24",
        "Savings none",
    ):
        assert shown in text, shown


def test_accuracy_heatmap_cells_carry_the_confusion_counts(sample):
    results, dom = sample
    rows = results.filter(pl.col("gold_label").is_not_null())
    expected = {(g, p): n for g, p, n in rows.group_by("gold_label", "label").len().iter_rows()}
    classes = sorted({g for g, _ in expected} | {p for _, p in expected})
    assert len(dom.cells) == len(classes) ** 2  # n x n (every label valid here)
    assert [(c["gold"], c["predicted"]) for c in dom.cells] == [
        (g, p) for g in classes for p in classes
    ]
    assert {(c["gold"], c["predicted"]): c["count"] for c in dom.cells} == {
        (g, p): expected.get((g, p), 0) for g in classes for p in classes
    }
    assert int(dom.body["data-cells"] or 0) == len(classes) ** 2  # laid out, not empty
    correct = sum(n for (g, p), n in expected.items() if g == p)
    text = dom.text()
    assert f"{correct:,} of {rows.height:,} rows with a gold label are right" in text
    assert "95% interval" in text and "macro average" in text
    for name in classes:  # the per-class table: precision, recall, F1 to 3 places
        hit, predicted = expected.get((name, name), 0), rows.filter(pl.col("label") == name)
        assert f"{name} {hit / predicted.height:.3f}" in text


def test_every_chart_has_nice_ticks_and_its_marks(sample):
    results, dom = sample
    laid_out = json.loads(dom.body["data-charts"] or "[]")
    # cost by group, latency percentiles, cumulative cost, input and output tokens
    assert len(laid_out) == len(dom.charts) == 5
    assert all(c["width"] > 0 and c["marks"] > 0 and c["ticks"] >= 2 for c in laid_out), laid_out
    for svg in dom.charts:
        assert_nice(svg["x"])
    for svg in dom.charts[2:]:  # the line and the histograms have a value axis up too
        assert_nice(svg["y"])
    assert laid_out[0]["marks"] == results["label"].n_unique()  # one bar a group
    assert laid_out[1]["marks"] == 4  # p50, p90, p95, p99
    assert [t for t in dom.texts if t.startswith("p9") and t.endswith(" ms")]
    for svg, column in ((dom.charts[3], "input_tokens"), (dom.charts[4], "output_tokens")):
        assert sum(int(c.replace(",", "")) for c in svg["counts"]) == results[column].count()
    cumulative = dom.charts[2]
    assert laid_out[2]["projection"] == 1  # dashed, to the projected total
    assert cumulative["notes"][0] == f"total ${exact_cost(results).normalize():f}"
    assert cumulative["notes"][1].startswith("projected $")
    assert cumulative["notes"][1].endswith("(80 rows not done)")


def hostile_output(directory: Path) -> Path:
    """Results whose labels, gold labels, model and job name are markup; 2 rows not done."""
    labels = [HOSTILE[0], HOSTILE[1], "plain", HOSTILE[0], None, HOSTILE[1]]
    gold = [HOSTILE[0], HOSTILE[0], "plain", HOSTILE[1], HOSTILE[1], HOSTILE[1]]
    start = datetime(2026, 1, 1, 12, tzinfo=UTC)
    rows = [
        {
            "id": f"r{i}", "gold": g, "status": "ok", "response_text": label,
            "model": "gw-<img src=x onerror=alert(3)>", "input_tokens": 10 + i,
            "output_tokens": 2, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "cost_usd": (i + 1) / 100_000, "latency_ms": 100.0 + i,
            "finished_at": start + timedelta(seconds=i), "price_table_version": "v<1>",
            "label": label, "label_status": "ok" if label else "invalid",
        }
        for i, (label, g) in enumerate(zip(labels, gold, strict=True))
    ]  # fmt: skip
    schema = output_schema(
        [pa.field("id", pa.string()), pa.field("gold", pa.string())],
        [pa.field("label", pa.string())],
    )
    directory.mkdir(parents=True)
    pl.from_arrow(pa.Table.from_pylist(rows, schema=schema)).write_parquet(directory / RESULTS_FILE)
    record = {"job": "</title><script>alert(2)</script>", "rows_total": 8}
    record |= {"gold_column": "gold", "label_column": "label"}
    (directory / "run.json").write_text(json.dumps(record))
    return directory


@needs_chromium
def test_labels_and_names_from_the_data_render_as_text(tmp_path):
    out = hostile_output(tmp_path / "out")
    page = tmp_path / "report.html"
    results = pl.read_parquet(out / RESULTS_FILE)
    write_html(results, ["label"], page, "out <script>alert(4)</script>", out)
    raw = page.read_text()
    own = PAGE.count("<script")
    assert raw.count("<script") == raw.count("</script>") == own == 2
    dom = dump_dom(page, tmp_path / "profile")
    assert dom.scripts == own and dom.body["data-scripts"] == str(own)  # none from the data
    for hostile in (*HOSTILE, "</title><script>alert(2)</script>", "gw-<img src=x"):
        assert any(hostile in t for t in dom.texts), hostile  # shown, as text
    assert {c["gold"] for c in dom.cells} == {*HOSTILE, "plain"}  # attributes round-trip
    assert len(dom.cells) == 3 * 4  # 3 classes, and a column for the row without a label
    embedded = raw.split('<script type="application/json" id="report-data">')[1]
    data = json.loads(embedded.split("</script>")[0])
    assert data["job"] == "</title><script>alert(2)</script>"
    assert set(data["accuracy"]["classes"]) == {*HOSTILE, "plain"}
    assert "<title>out &lt;script&gt;alert(4)&lt;/script&gt;</title>" in raw


def test_make_report_demo_is_a_documented_target():
    makefile = (REPO / "Makefile").read_text()
    assert "\nreport-demo: $(STAMP) ## " in makefile
    recipe = makefile.split("\nreport-demo:")[1].split("\n\n")[0]
    assert "out/report-demo.html" in recipe and "out/report-demo.png" in recipe
    assert "--screenshot" in recipe
