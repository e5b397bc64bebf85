"""The report as a radiologist reads it, rendered by Debian's Chromium through Playwright:
header, findings, each node's caption with its own numbers, axis labels inside the image and
clear of each other, the wording without nodes. Screenshots go to out/test-screenshots/."""

from __future__ import annotations

import csv
import json
import re

import pytest
from conftest import REPO, run_cli

from LLNAssistLib import phantom

CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "out" / "test-screenshots"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, path, shot):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(path.resolve().as_uri())
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / shot), full_page=True)
    return page


def test_report_header_captions_and_labels(browser, analyzed):
    out, _ = analyzed
    page = _open(browser, out / "report.html", "report-nodes.png")
    header = page.inner_text("#header")
    assert "Patient" in header and "Study date" in header and "image.nii.gz" in header
    with open(out / "nodes.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 2
    for r in rows:
        caption = page.inner_text(f"#node-{r['node_id']} .caption")
        assert f"{float(r['radiomics_probability']):.2f} (score {float(r['radiomics_score']):.2f}" in caption
        shown = float(re.search(r"Short axis ([\d.]+) mm", caption).group(1))
        assert abs(shown - float(r["short_axis_mm"])) <= 0.051 and r["side"] in caption
        assert "slice " in caption  # as the viewer numbers it, not an internal index
        svg = page.locator(f"#key-{r['node_id']}").bounding_box()
        labels = page.locator(f"#key-{r['node_id']} text.axis-label")
        assert labels.count() == 2
        boxes = [labels.nth(i).bounding_box() for i in range(2)]
        for b in boxes:  # inside the image
            assert b["x"] >= svg["x"] and b["y"] >= svg["y"]
            assert b["x"] + b["width"] <= svg["x"] + svg["width"] + 0.5
            assert b["y"] + b["height"] <= svg["y"] + svg["height"] + 0.5
        a, b = boxes  # and not on top of each other
        assert (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])
        shown = sorted(float(labels.nth(i).text_content().split()[0]) for i in range(2))
        want = sorted([float(r["long_axis_mm"]), float(r["short_axis_mm"])])
        assert all(abs(a - b) <= 0.051 for a, b in zip(shown, want))
        colours = {page.locator(f"#key-{r['node_id']} line.{c}").get_attribute("stroke") for c in ("long", "short")}
        assert colours == {"#00e5ff", "#ff3df5"}  # the caption's cyan and magenta
    body = page.inner_text("body")
    assert "DL status" not in body and ">=" not in body and "()" not in body and "key slice" not in body
    assert "Lateral compartment" in body.replace("lateral compartment", "Lateral compartment")
    assert "Impression:" in page.inner_text("#findings")


def test_report_without_nodes_says_so_and_still_shows_the_anatomy(browser, tmp_path):
    ph = phantom.generate(910003, size=256, slices=24, n_nodes=0)
    phantom.write(ph, tmp_path / "case")
    out = tmp_path / "out"
    run_cli("analyze", tmp_path / "case" / "image.nii.gz", "--out", out, "--device", "cpu", "--no-radiomics",
            check_rc=0)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_nodes"] == 0
    page = _open(browser, out / "report.html", "report-no-nodes.png")
    assert page.inner_text("#summary").startswith("No lateral lymph node detected.")
    assert "0.0 mm" not in page.inner_text("body")
    findings = page.inner_text("#findings")
    assert "Right lateral compartment: no lymph node detected." in findings
    assert "no lateral lymph node suspicious for metastasis" in findings
    assert page.evaluate("document.getElementById('overview').naturalWidth") > 0
