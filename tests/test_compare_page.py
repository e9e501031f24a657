"""The compare page opened in a real headless browser (Debian's chromium): a card an
output, each pair's flips as a heatmap whose cells hold the json's counts, and the
accuracy-against-cost plot laid out."""

from __future__ import annotations

from pathlib import Path

from pipeline.reports.compare import compare, comparison_json
from pipeline.reports.compare_html import write_comparison_html
from tests.test_compare import GOLD, output
from tests.test_html_report import dump_dom, needs_chromium


@needs_chromium
def test_the_compare_page_renders_its_flips_and_plot(tmp_path: Path) -> None:
    a = output(tmp_path / "a", ["pos", "neg", "neg", "neu", "neg", "pos", "pos", None])
    b = output(tmp_path / "b", GOLD, cost=0.003)
    c = output(tmp_path / "c", ["neg"] * 8, cost=0.0005)
    comparison = compare([a, b, c])
    page = tmp_path / "compare.html"
    write_comparison_html(comparison, page)
    dom = dump_dom(page, tmp_path / "profile")
    flips = [
        {(f["a"], f["b"]): f["rows"] for f in pair["flips"]}
        for pair in comparison_json(comparison)["pairs"]
    ]
    shown, start = [], 0
    for counts in flips:  # each heatmap: a square of the pair's labels, in page order
        labels = {x for x, _ in counts} | {y for _, y in counts}
        cells = dom.cells[start : start + len(labels) ** 2]
        shown.append({(cell["gold"], cell["predicted"]): cell["count"] for cell in cells})
        start += len(labels) ** 2
    assert start == len(dom.cells)  # one heatmap a pair, nothing else
    for json_counts, cells in zip(flips, shown, strict=True):
        assert {k: v for k, v in cells.items() if v} == json_counts
    (plot,) = dom.charts
    assert plot["x"] and plot["y"]  # the axes laid out with their ticks
    assert "no gold labels" not in dom.text()
