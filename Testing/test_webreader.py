"""The browser reading station, driven by real Chromium (Debian's, through Playwright) against a
real `llnassist study serve` server: blinding, scoring by button and key, durable submit,
resume after reload and after a server restart, the washout wall."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import REPO, run_cli

from LLNAssistLib import phantom

CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, study, reader):
        self.port = _free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "LLNAssistLib.cli", "study", "serve", str(study),
                                      "--reader", reader, "--port", str(self.port)], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{self.port}/"
        t0 = time.time()
        while time.time() - t0 < 90:  # load the page only once the server answers (DESIGN.md)
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("server did not start")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def study(tmp_path_factory, small_case, analyzed):
    d = tmp_path_factory.mktemp("web")
    # C0: the analysed phantom, its AI layer from `llnassist analyze`; C1: AI given as numbers only
    rows = ["case_id,truth_json,image,analysis_dir,ai_probability,ai_status",
            f"C0,{small_case / 'truth.json'},{small_case / 'image.nii.gz'},{analyzed[0]},,"]
    ph = phantom.generate(910012, size=256, slices=20, n_nodes=2)
    phantom.write(ph, d / "c910012")
    rows.append(f"C1,{d / 'c910012' / 'truth.json'},{d / 'c910012' / 'image.nii.gz'},,0.2,negative")
    (d / "cases.csv").write_text("\n".join(rows) + "\n")
    (d / "readers.csv").write_text("reader_id,name\nR1,Dr One\n")
    path = d / "study.sqlite"
    run_cli("study", "create", path, "--name", "web", "--washout-days", "0", check_rc=0)
    run_cli("study", "add-cases", path, d / "cases.csv", check_rc=0)
    run_cli("study", "add-readers", path, d / "readers.csv", check_rc=0)
    return path


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is missing: scripts/test.sh installs it (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def analyzed_dir(study_path):
    with sqlite3.connect(study_path) as c:
        ai = json.loads(c.execute("SELECT ai FROM cases WHERE case_id = 'C0'").fetchone()[0])
    from pathlib import Path

    return Path(ai["segmentation"]).parent


def _ratings(path):
    with sqlite3.connect(path) as c:
        return c.execute("SELECT r.case_id, r.session, g.score, g.call, r.status FROM ratings g JOIN reads r "
                         "ON r.read_id = g.read_id ORDER BY r.submitted_at").fetchall()


def _check_layer(page, study):
    """Blinding: nothing of the AI on an unaided read; on an aided read the AI call and, for the
    analysed case, its node table."""
    title = _text(page, "#case-title")
    if "(unaided)" in title:
        assert page.locator("#ai-text").count() == 0 and "AI" not in page.inner_text("body")
        assert page.locator(".ai-node").count() == 0
        return
    assert "AI: patient" in _text(page, "#ai-text")
    if "C0" in title:
        n_nodes = len(json.loads((analyzed_dir(study) / "nodes.json").read_text(encoding="utf-8")))
        assert n_nodes and page.locator(".ai-node").count() == n_nodes
    else:
        assert "probability 0.20" in _text(page, "#ai-text")


def _text(page, sel):
    return page.inner_text(sel).strip()


def test_reading_flow_in_a_real_browser(study, browser, tmp_path):
    server = Server(study, "R1")
    try:
        page = browser.new_page(viewport={"width": 1300, "height": 800})
        page.goto(server.url)
        page.wait_for_selector("#case-title", timeout=60000)
        assert "session 1: case 1 of 2" in _text(page, "#progress")
        first_modality = "aided" if "(aided)" in _text(page, "#case-title") else "unaided"
        assert {"C0", "C1"} & set(_text(page, "#case-title").split())
        _check_layer(page, study)
        # the slice view shows the image (rendered by Slicer's slice view on the server)
        page.wait_for_timeout(2000)
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot))
        from PIL import Image

        pix = np.asarray(Image.open(shot).convert("L"))[100:700, 50:900]
        assert pix.std() > 20, "slice view looks blank"
        # submit without a score is refused with a message, nothing recorded
        page.click("#submit")
        page.wait_for_function("document.querySelector('#message').innerText.includes('score')")
        assert _ratings(study) == []
        # place a point on the node: click the centre of the slice view
        page.click("#place-point")
        page.wait_for_function("document.querySelector('#point-text').innerText.includes('click')")
        box = page.locator("#view").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_function("document.querySelector('#point-text').innerText.includes('point R')", timeout=20000)
        page.keyboard.press("4")  # keys 1-5 score
        page.click("#call-yes")
        page.click("#submit")
        try:
            page.wait_for_function("document.querySelector('#progress').innerText.includes('case 2 of 2')",
                                   timeout=30000)
        except Exception:  # say what the page said
            raise AssertionError(f"page did not advance: {_text(page, '#message')}") from None
        got = _ratings(study)
        assert len(got) == 1 and got[0][2:] == (4, 1, "submitted")  # durable before the page moved on
        # the point is where the click was: the view is fitted to the image, so its centre is the
        # image's in-plane centre (R, A), and it lies on a slice of the image (S)
        with sqlite3.connect(study) as c:
            case_id, r, a, s_ = c.execute("SELECT r.case_id, g.r, g.a, g.s FROM ratings g JOIN reads r "
                                          "ON r.read_id = g.read_id").fetchone()
            image = json.loads(c.execute("SELECT json_object('p', image) FROM cases WHERE case_id = ?",
                                         (case_id,)).fetchone()[0])["p"]
        import SimpleITK as sitk

        from LLNAssistLib.imageio import index_to_ras

        img = sitk.ReadImage(image)
        size = np.array(img.GetSize())
        corners = index_to_ras(img, np.array([[0, 0, 0], size - 1]))
        centre = corners.mean(0)
        assert abs(r - centre[0]) < 10 and abs(a - centre[1]) < 10, (r, a, centre)
        assert corners[:, 2].min() - 2 <= s_ <= corners[:, 2].max() + 2
        second = _text(page, "#case-title")
        # the other case of the crossover is read with the other modality in session 1
        assert ("(aided)" in second) == (first_modality == "unaided")
        _check_layer(page, study)
        # reload: resumes at the same case
        page.reload()
        page.wait_for_selector("#case-title", timeout=60000)
        assert _text(page, "#case-title") == second
        page.click("#score-2")
        page.click("#call-no")
        page.fill("#comment", "small oval node")
        page.click("#submit")
        page.wait_for_function("document.querySelector('#progress').innerText.includes('session 2')", timeout=30000)
    finally:
        server.stop()
    # a new server (restart) resumes in session 2 with the other modality per case
    server = Server(study, "R1")
    try:
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_selector("#case-title", timeout=60000)
        assert "session 2: case 1 of 2" in _text(page, "#progress")
    finally:
        server.stop()
    rows = _ratings(study)
    assert [(r[1], r[2], r[3]) for r in rows] == [(1, 4, 1), (1, 2, 0)]
    export = run_cli("study", "status", study, "--json", check_rc=0)
    assert json.loads(export.stdout)["readers"][0]["sessions"]["1"] == {"done": 2, "total": 2}
