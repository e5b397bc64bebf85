"""The reading server, driven by real Chromium (Debian's, through Playwright) and by a bare wslink
client against a real `llnassist study serve` server: sign-in by invite link, two readers reading
at once, blinding, scoring, several nodes per read, durable submit, resume after reload and server
restart, answers and display reset per case, a second tab refused, and what an attacker on the
network gets: nothing without a sign-in, nothing from a foreign page, nothing with trame's default
key, nothing as another reader, nothing after revocation."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import REPO, run_cli
from wsclient import Refused, WslinkClient

from LLNAssistLib import phantom

CHROMIUM = "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, study, *extra, port=None):
        self.port = port or _free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "LLNAssistLib.cli", "study", "serve", str(study),
                                      "--port", str(self.port), *extra], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/ws"
        t0 = time.time()
        while time.time() - t0 < 60:  # load pages only once the server answers (DESIGN.md)
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                urllib.request.urlopen(self.url + "/", timeout=2)
                return
            except urllib.error.HTTPError as e:
                if e.code == 401:  # up, and asking for a sign-in
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError("server did not start")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def invite(study, who, server, flag="--reader"):
    p = run_cli("study", "invite", study, flag, who, "--url", server.url, check_rc=0)
    link = p.stdout.strip().splitlines()[-1]
    assert link.startswith(server.url + "/signin?token=")
    return link


@pytest.fixture(scope="module")
def study(tmp_path_factory, small_case, analyzed):
    d = tmp_path_factory.mktemp("web")
    # C0: the analysed phantom, its AI layer from `llnassist analyze`; C1: AI given as numbers only
    rows = ["case_id,truth_json,image,analysis_dir,ai_probability,ai_status",
            f"C0,{small_case / 'truth.json'},{small_case / 'image.nii.gz'},{analyzed[0]},,"]
    ph = phantom.generate(910012, size=256, slices=20, n_nodes=2)
    phantom.write(ph, d / "c910012")
    rows.append(f"C1,{d / 'c910012' / 'truth.json'},{d / 'c910012' / 'image.nii.gz'},,0.2,negative")
    (d / "cases.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (d / "readers.csv").write_text("reader_id,name\nR1,Dr One\nR2,Dr Two\nR3,Dr Three\n", encoding="utf-8")
    path = d / "study.sqlite"
    run_cli("study", "create", path, "--name", "web", "--washout-days", "0", check_rc=0)
    run_cli("study", "add-cases", path, d / "cases.csv", check_rc=0)
    run_cli("study", "add-readers", path, d / "readers.csv", check_rc=0)
    return path


@pytest.fixture(scope="module")
def server(study):
    s = Server(study)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is missing: scripts/test.sh installs it (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _reads(path, reader=None):
    with sqlite3.connect(path) as c:
        rows = c.execute("SELECT r.reader_id, r.case_id, r.session, g.score, g.call, g.most_suspicious, r.status, "
                         "g.node_key FROM ratings g JOIN reads r ON r.read_id = g.read_id ORDER BY r.submitted_at, "
                         "g.node_key").fetchall()
    return [r for r in rows if reader is None or r[0] == reader]


def _text(page, sel):
    return page.inner_text(sel).strip()


def _analysis_dir(study_path):
    from pathlib import Path

    with sqlite3.connect(study_path) as c:
        ai = json.loads(c.execute("SELECT ai FROM cases WHERE case_id = 'C0'").fetchone()[0])
    return Path(ai["segmentation"]).parent


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
        n_nodes = len(json.loads((_analysis_dir(study) / "nodes.json").read_text(encoding="utf-8")))
        assert n_nodes and page.locator(".ai-node").count() == n_nodes
    else:
        assert "probability 0.20" in _text(page, "#ai-text")


def _view_pixels(page, tmp_path, name):
    page.wait_for_timeout(1500)  # the server-rendered view arrives as an image stream
    shot = tmp_path / f"{name}.png"
    page.locator("#view").screenshot(path=str(shot))
    from PIL import Image

    return np.asarray(Image.open(shot).convert("RGB")).astype(int)


def _coloured_fraction(pix) -> float:
    """Share of pixels with a clear hue (a grey MR image has none)."""
    return float(((pix.max(axis=2) - pix.min(axis=2)) > 60).mean())


_SHOWN: list = []


def _check_colour(page, tmp_path):
    """The analysed case shown aided draws its AI segmentation in colour; an unaided case is grey,
    also right after an aided one (no colour table or layer carried over)."""
    title = _text(page, "#case-title")
    _SHOWN.append(f"{id(page)} {title}")
    pix = _view_pixels(page, tmp_path, re.sub(r"\W", "", title))
    coloured = _coloured_fraction(pix)
    if "C0" in title and "(aided)" in title:
        assert coloured > 0.0005, (title, coloured)
    elif "(unaided)" in title:
        assert coloured < 0.0005, (title, coloured)
    return pix


def _sign_in(browser, link):
    ctx = browser.new_context(viewport={"width": 1300, "height": 800})
    page = ctx.new_page()
    page.goto(link)
    page.wait_for_selector("#case-title", timeout=90000)
    return ctx, page


def _answers_cleared(page):
    for sel in ("#call-yes", "#call-no", *[f"#score-{k}" for k in range(1, 6)]):
        assert "bg-primary" not in (page.get_attribute(sel, "class") or ""), f"{sel} still selected"
    assert page.locator("#submit").is_disabled()
    assert page.input_value("#comment") == ""


def _wait_progress(page, text, timeout=30000):
    try:
        page.wait_for_function(f"document.querySelector('#progress').innerText.includes({text!r})", timeout=timeout)
    except Exception:  # say what the page said
        raise AssertionError(f"page did not reach {text!r}: {_text(page, '#message')}") from None


def test_two_signed_in_readers_read_at_once_each_as_themselves(study, server, browser, tmp_path):
    ctx1, p1 = _sign_in(browser, invite(study, "R1", server))
    ctx2, p2 = _sign_in(browser, invite(study, "R2", server))
    try:
        assert "Reader R1 - session 1: case 1 of 2" in _text(p1, "#progress")
        assert "Reader R2 - session 1: case 1 of 2" in _text(p2, "#progress")
        first = {}
        for page in (p1, p2):
            _check_layer(page, study)
            first[page] = _text(page, "#case-title")
            assert page.locator("#submit").is_disabled()  # no score and call yet
            pix = _check_colour(page, tmp_path)
            assert pix.std() > 20, "slice view looks blank"
        # R1 places a point on the node (centre of the view), scores by key and answers yes
        p1.click("#place-point")
        p1.wait_for_function("document.querySelector('#point-text').innerText.includes('click')")
        box = p1.locator("#view").bounding_box()
        p1.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        p1.wait_for_function("document.querySelector('#point-text').innerText.includes('point R')", timeout=20000)
        p1.keyboard.press("4")
        p1.click("#call-yes")
        # R2 answers differently, in between
        p2.click("#score-2")
        p2.click("#call-no")
        assert "bg-primary" in p2.get_attribute("#call-no", "class")  # what _answers_cleared looks for
        assert not p2.locator("#submit").is_disabled()
        p2.fill("#comment", "=HYPERLINK(\"http://x\")")
        p1.click("#submit")
        p2.click("#submit")
        _wait_progress(p1, "case 2 of 2")
        _wait_progress(p2, "case 2 of 2")
        # durable before the pages moved on, each under its own reader, nothing crossed
        assert [r[:5] for r in _reads(study, "R1")] == [("R1", first[p1].split()[1], 1, 4, 1)]
        assert [r[:5] for r in _reads(study, "R2")] == [("R2", first[p2].split()[1], 1, 2, 0)]
        for page in (p1, p2):
            _answers_cleared(page)  # the next case opens with nothing selected
            _check_layer(page, study)
            title = _text(page, "#case-title")
            assert ("(aided)" in title) == ("(unaided)" in first[page])  # crossover: the other modality
            _check_colour(page, tmp_path)
        # the point is where the click was: the view is fitted to the image, so its centre is the
        # image's in-plane centre (R, A), and it lies on a slice of the image (S)
        with sqlite3.connect(study) as c:
            r, a, s_, image = c.execute("SELECT g.r, g.a, g.s, c.image FROM ratings g JOIN reads r ON r.read_id = "
                                        "g.read_id JOIN cases c ON c.case_id = r.case_id WHERE r.reader_id = 'R1'"
                                        ).fetchone()
        import SimpleITK as sitk

        from LLNAssistLib.imageio import index_to_ras

        img = sitk.ReadImage(image)
        corners = index_to_ras(img, np.array([[0, 0, 0], np.array(img.GetSize()) - 1]))
        assert abs(r - corners.mean(0)[0]) < 10 and abs(a - corners.mean(0)[1]) < 10, (r, a, corners.mean(0))
        assert corners[:, 2].min() - 2 <= s_ <= corners[:, 2].max() + 2
        # a second tab of R1 is refused; the first keeps its read
        extra = ctx1.new_page()
        extra.goto(server.url + "/")
        extra.wait_for_selector("#llnassist-refused", timeout=60000)
        assert "another tab" in _text(extra, "#llnassist-refused")
        extra.close()
        # reload: resumes at the same case (the refused tab took nothing over)
        second = _text(p1, "#case-title")
        p1.reload()
        p1.wait_for_selector("#case-title", timeout=60000)
        assert _text(p1, "#case-title") == second
        # several nodes in one read: a first node with its score, then the most suspicious one
        p1.click("#place-point")
        p1.wait_for_function("document.querySelector('#point-text').innerText.includes('click')")
        p1.mouse.click(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
        p1.wait_for_function("document.querySelector('#point-text').innerText.includes('point R')", timeout=20000)
        p1.click("#score-2")
        p1.click("#add-node")
        p1.wait_for_selector(".saved-node", timeout=20000)
        assert "score 2" in _text(p1, ".saved-node")
        p1.click("#score-5")
        p1.click("#call-yes")
        p1.click("#submit")
        _wait_progress(p1, "session 2")
        p2.click("#score-3")
        p2.click("#call-no")
        p2.click("#submit")
        _wait_progress(p2, "session 2")
        for page in (p1, p2):
            _check_colour(page, tmp_path)
        # the order of this study's seed shows someone an unaided case right after the aided,
        # segmented one, the case that used to be drawn in magenta
        seen = [[t for t in _SHOWN if t.startswith(f"{id(page)} ")] for page in (p1, p2)]
        assert any("C0 (aided)" in a and "(unaided)" in b for s in seen for a, b in zip(s, s[1:])), seen
        rows = [r for r in _reads(study, "R1") if r[1] == second.split()[1]]
        assert sorted((r[3], r[4], r[5]) for r in rows) == [(2, None, 0), (5, 1, 1)]
    finally:
        ctx1.close()
        ctx2.close()
    # the export keeps R2's formula-like comment as text
    out = tmp_path / "export.csv"
    run_cli("study", "export", study, "--out", out, check_rc=0)
    assert "'=HYPERLINK" in out.read_text(encoding="utf-8")


def test_a_restarted_server_keeps_sign_ins_and_resumes(study, server, browser, tmp_path):
    """After a restart (fresh stations), a signed-in reader resumes where they were."""
    ctx, page = _sign_in(browser, invite(study, "R3", server))
    try:
        assert "Reader R3 - session 1: case 1 of 2" in _text(page, "#progress")
        page.click("#score-3")
        page.click("#call-no")
        page.click("#submit")
        _wait_progress(page, "case 2 of 2")
        cookies = ctx.cookies()
    finally:
        ctx.close()
    server.stop()
    restarted = Server(study, port=server.port)  # the cookie is for this address
    try:
        ctx = browser.new_context()
        ctx.add_cookies(cookies)
        page = ctx.new_page()
        page.goto(restarted.url + "/")
        page.wait_for_selector("#case-title", timeout=90000)
        assert "Reader R3 - session 1: case 2 of 2" in _text(page, "#progress")
        ctx.close()
    finally:
        restarted.stop()
    server.__init__(study)  # the module's server again, for the tests after this one


def _run(coro):
    """Runs a bare client on its own thread: Playwright's sync API owns this thread's event loop."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_nothing_without_a_sign_in_from_a_foreign_page_or_with_the_default_key(study, server, browser):
    # an unsigned browser sees no case data, and its websocket is refused
    ctx = browser.new_context()
    page = ctx.new_page()
    resp = page.goto(server.url + "/")
    assert resp.status == 401 and "Sign in" in page.inner_text("body")
    assert not re.search(r"\bC[01]\b|case_id|R1", page.content())
    opened = page.evaluate("""() => new Promise(done => { const s = new WebSocket(location.origin.replace('http',
        'ws') + '/ws'); s.onopen = () => done(true); s.onerror = () => done(false); })""")
    assert opened is False
    ctx.close()
    # a bare client with trame's default key: refused without a sign-in, and from a foreign Origin
    # even with a valid sign-in cookie
    link = invite(study, "R2", server)
    cookie = _cookie_of(link)
    for origin, ck, code in (("http://evil.example", None, "403"), (server.url, None, "401"),
                             ("http://evil.example", cookie, "403"), (None, cookie, "403")):
        with pytest.raises(Refused, match=code):
            _run(WslinkClient.connect(server.ws, cookie=ck, origin=origin))
    # a rebound DNS name gets nothing either
    req = urllib.request.Request(server.url + "/", headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError, match="421"):
        urllib.request.urlopen(req, timeout=10)
    # the station itself (127.0.0.1, random port) refuses trame's default key
    port = _station_port("R2")
    with pytest.raises(Refused, match="Authentication failed"):
        _run(WslinkClient.connect(f"ws://127.0.0.1:{port}/ws"))


def _cookie_of(link) -> str:
    """Signs in like a browser would and returns the sign-in cookie."""
    import http.cookiejar

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    try:
        opener.open(link, timeout=120)  # follows the redirect to / (starts the reader's station)
    except urllib.error.HTTPError as e:
        raise AssertionError(f"sign-in failed: {e.code} {e.read()[:300]!r}") from None
    return next(c.value for c in jar if c.name == "llnassist_signin")


def _station_port(reader) -> int:
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "reader-worker" in cmd and reader in cmd:
            return int(cmd[cmd.index("--port") + 1])
    raise AssertionError(f"no station for {reader}")


def test_a_reader_cannot_act_as_another_and_revocation_ends_access(study, server):
    link = invite(study, "R2", server)
    cookie = _cookie_of(link)
    before_r1 = _reads(study, "R1")

    async def attack():
        c = await WslinkClient.connect(server.ws, cookie=cookie, origin=server.url)
        try:
            st = await c.get_state()
            assert st["reader"] == "R2"
            seq, case = st["read_seq"], st["case_id"]
            # claiming another reader in the page state or the call changes nothing
            await c.set_state(reader="R1", read_seq=seq + 5)
            with pytest.raises(Refused):
                await c.trigger("llnassist_submit", 5, "yes", "", seq, None, reader="R1")
            await c.trigger("llnassist_submit", 5, "yes", "as R2", seq, None)
            await c.wait_for(lambda s: s.get("read_seq") != seq)
            # a stale answer (for the case before) is refused, not recorded on the current case;
            # so is an AI node this unaided-or-numbers-only case does not have
            await c.trigger("llnassist_submit", 1, "no", "stale", seq, None)
            await c.wait_for(lambda s: "earlier case" in (s.get("message") or ""))
            await c.set_state(ai_node_ids=["99"])
            await c.trigger("llnassist_submit", 1, "no", "stale", c.state["read_seq"], "99")
            await c.wait_for(lambda s: "not part of this case" in (s.get("message") or ""))
            return case
        finally:
            await c.close()

    case = _run(attack())
    assert _reads(study, "R1") == before_r1
    mine = [r for r in _reads(study, "R2") if r[1] == case and r[3] == 5]
    assert len(mine) == 1 and mine[0][4] == 1
    with sqlite3.connect(study) as c:
        assert c.execute("SELECT COUNT(*) FROM ratings WHERE comment = 'stale'").fetchone()[0] == 0

    # an unused link that is revoked stops working; an open page is closed within seconds
    unused = invite(study, "R2", server)

    async def revoked_while_open():
        c = await WslinkClient.connect(server.ws, cookie=cookie, origin=server.url)
        await c.get_state()
        run_cli("study", "revoke", study, "--user", "r2", "--reason", "left the study", check_rc=0)
        with pytest.raises(Refused):
            await c.wait_for(lambda s: False, timeout=20)
        code = c.closed[0]
        await c.close()
        return code

    assert _run(revoked_while_open()) == 4401
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(unused, timeout=10)
    assert e.value.code == 403 and "revoked" in e.value.read().decode()
    with pytest.raises(Refused, match="401"):
        _run(WslinkClient.connect(server.ws, cookie=cookie, origin=server.url))
    # a used link does not work twice
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(link, timeout=10)
    assert "already used" in e.value.read().decode()
    listing = run_cli("study", "access", study, check_rc=0).stdout
    assert re.search(r"R2\s+link\s+revoked", listing) and re.search(r"R2\s+sign-in\s+revoked", listing)


def test_coordinator_view_needs_the_coordinator(study, server, browser):
    p = run_cli("study", "invite", study, "--reader", "R1", "--by", "R1", "--url", server.url, check_rc=2)
    assert "only a coordinator" in p.stderr
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(invite(study, "coordinator", server, flag="--user"))
    page.wait_for_selector("#readers")
    rows = page.locator("#readers tr.reader").all_inner_texts()
    assert len(rows) == 3 and any(r.startswith("R1") and "2/2" in r for r in rows)
    assert "revoke_access" in page.inner_text("#events") and "R2" in page.inner_text("#access")
    status = page.goto(server.url + "/status.json").json()
    assert {r["reader_id"] for r in status["readers"]} == {"R1", "R2", "R3"}
    ctx.close()
    # a reader asking for it gets their station's page, not the study overview
    cookie = _cookie_of(invite(study, "R1", server))
    req = urllib.request.Request(server.url + "/status.json", headers={"Cookie": f"llnassist_signin={cookie}"})
    try:
        body = urllib.request.urlopen(req, timeout=30).read().decode()
    except urllib.error.HTTPError as e:
        body = e.read().decode()
    assert "R3" not in body and "readers" not in body


def test_missing_image_cannot_be_submitted(tmp_path, browser):
    path = tmp_path / "s.sqlite"
    (tmp_path / "cases.csv").write_text(f"case_id,truth,image,ai_probability\nM1,1,{tmp_path / 'gone.nii.gz'},0.9\n",
                                        encoding="utf-8")
    (tmp_path / "readers.csv").write_text("reader_id\nR1\n", encoding="utf-8")
    run_cli("study", "create", path, "--name", "m", "--washout-days", "0", check_rc=0)
    run_cli("study", "add-cases", path, tmp_path / "cases.csv", check_rc=0)
    run_cli("study", "add-readers", path, tmp_path / "readers.csv", check_rc=0)
    srv = Server(path)
    try:
        ctx = browser.new_context()
        page = ctx.new_page()
        page.goto(invite(path, "R1", srv))
        page.wait_for_selector("#case-title", timeout=90000)
        assert "M1" in _text(page, "#case-title") and "missing" in _text(page, "#message")
        page.click("#score-4")
        page.click("#call-yes")
        assert page.locator("#submit").is_disabled() and page.locator("#place-point").is_disabled()
        ctx.close()
        cookie = _cookie_of(invite(path, "R1", srv))

        async def forced():  # a page that enables the button anyway gets nothing recorded
            c = await WslinkClient.connect(srv.ws, cookie=cookie, origin=srv.url)
            st = await c.get_state()
            # the page state is the client's to write; the server does not take it as fact
            await c.set_state(image_ready=True, done=False, modality="aided", ai_node_ids=["1"])
            await c.trigger("llnassist_submit", 4, "yes", "", st["read_seq"], None)
            await c.wait_for(lambda s: "no case image" in (s.get("message") or ""))
            await c.trigger("llnassist_add_node", 4, "", st["read_seq"], "1")
            await c.close()

        _run(forced())
        assert _reads(path) == []
    finally:
        srv.stop()


def test_listening_beyond_this_computer_needs_the_flag(study):
    p = run_cli("study", "serve", study, "--host", "0.0.0.0", "--port", str(_free_port()), check_rc=2)
    assert "--allow-network" in p.stderr and "TLS" in p.stderr
