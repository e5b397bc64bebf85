"""Load on one reading server: N simulated readers (bare wslink clients, each signed in with its own
invite link) read concurrently for a bounded time on localhost. Reports, per phase (one reader
alone, then all at once), the time from Submit to the next case's state arriving (case id, image
loaded on the server), the reads submitted, and checks that no answer was lost or crossed: every
submitted read in the store carries the score and comment its own reader's client sent for that
case, and every client's submit is in the store. Also the memory of the stations.

    .venv/bin/python benchmarks/bench_reading_server.py --readers 20 --seconds 90

The clients do not render the slice view (the server still loads and lays out each case's image);
a browser adds the image stream on top. Needs several GB of memory: one station per reader.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import http.cookiejar
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "Testing"))

from wsclient import WslinkClient  # noqa: E402

from LLNAssistLib import phantom  # noqa: E402


def _cli(*args) -> str:
    p = subprocess.run([sys.executable, "-m", "LLNAssistLib.cli", *map(str, args)], cwd=REPO, capture_output=True,
                       text=True, check=True)
    return p.stdout


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _expected(reader: str, case: str) -> int:
    return 1 + (sum(map(ord, reader + case)) % 5)


async def _sign_in(link: str) -> str:
    def go():
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        opener.open(link, timeout=600)  # follows to / : starts the reader's station
        return next(c.value for c in jar if c.name == "llnassist_signin")
    return await asyncio.get_running_loop().run_in_executor(None, go)


async def _reader(ws_url: str, origin: str, cookie: str, reader: str, until: float, lat: list, sent: list,
                  think: tuple) -> None:
    c = await WslinkClient.connect(ws_url, cookie=cookie, origin=origin)
    try:
        st = await c.get_state()
        await c.wait_for(lambda s: s.get("image_ready") or s.get("done"), timeout=120)
        rng = random.Random(reader)
        while time.monotonic() < until and not c.state.get("done"):
            await asyncio.sleep(rng.uniform(*think))
            seq, case = st["read_seq"], st["case_id"]
            score = _expected(reader, case)
            t0 = time.perf_counter()
            await c.trigger("llnassist_submit", score, "yes" if score >= 3 else "no", f"{reader}:{case}", seq, None)
            st = await c.wait_for(lambda s, seq=seq: s.get("read_seq") != seq and (s.get("image_ready")
                                                                                  or s.get("done")), timeout=120)
            lat.append(time.perf_counter() - t0)
            sent.append((reader, case, score))
    finally:
        await c.close()


def _station_rss_mb() -> float:
    import psutil

    total = 0
    for p in psutil.process_iter(["cmdline", "memory_info"]):
        if "reader-worker" in (p.info["cmdline"] or []):
            total += p.info["memory_info"].rss
    return total / 2**20


def _row(name, n, lat, wall):
    if not lat:
        return f"{name:<22} {n:>7} {0:>8}"
    q = statistics.quantiles(lat, n=20) if len(lat) >= 2 else [lat[0]] * 19
    return (f"{name:<22} {n:>7} {len(lat):>8} {len(lat) / wall * 60:>10.1f} {statistics.median(lat):>9.2f} "
            f"{q[18]:>8.2f} {max(lat):>8.2f}")


async def run(a) -> str:
    work = Path(tempfile.mkdtemp(prefix="lln-bench-reading-"))
    with open(work / "cases.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "truth", "image", "ai_probability", "ai_status"])
        for i in range(a.cases):
            phantom.write(phantom.generate(930000 + i, size=256, slices=24, n_nodes=2), work / f"c{i}")
            w.writerow([f"C{i}", i % 2, work / f"c{i}" / "image.nii.gz", round(0.1 + 0.8 * (i % 2), 2),
                        "positive" if i % 2 else "negative"])
    readers = [f"R{k:02d}" for k in range(1, a.readers + 1)]
    (work / "readers.csv").write_text("reader_id\n" + "\n".join(readers) + "\n", encoding="utf-8")
    study = work / "study.sqlite"
    _cli("study", "create", study, "--name", "load", "--washout-days", "0")
    _cli("study", "add-cases", study, work / "cases.csv")
    _cli("study", "add-readers", study, work / "readers.csv")
    port = _port()
    url, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws"
    server = subprocess.Popen([sys.executable, "-m", "LLNAssistLib.cli", "study", "serve", study, "--port", str(port)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/", timeout=2)
            except urllib.error.HTTPError:
                break
            except OSError:
                await asyncio.sleep(0.3)
        links = {r: _cli("study", "invite", study, "--reader", r, "--url", url).strip().splitlines()[-1]
                 for r in readers}
        t0 = time.monotonic()
        cookies = dict(zip(readers, await asyncio.gather(*[_sign_in(links[r]) for r in readers])))
        start_s = time.monotonic() - t0
        rss = _station_rss_mb()
        rows, sent_all = [], []
        # phase 1: one reader alone; phase 2: every reader at once
        for name, group, secs in (("1 reader alone", readers[:1], a.seconds / 3), (f"{len(readers)} readers at once",
                                                                                     readers, a.seconds)):
            lat, sent = [], []
            t1 = time.monotonic()
            await asyncio.gather(*[_reader(ws, url, cookies[r], r, t1 + secs, lat, sent, (a.think_min, a.think_max))
                                   for r in group])
            rows.append(_row(name, len(group), lat, time.monotonic() - t1))
            sent_all += sent
    finally:
        server.terminate()
        server.wait(timeout=60)
    with sqlite3.connect(study) as c:
        stored = c.execute("SELECT r.reader_id, r.case_id, g.score, g.comment FROM reads r JOIN ratings g ON "
                           "g.read_id = r.read_id WHERE r.status = 'submitted'").fetchall()
    stored_set = {(r, cs, sc) for r, cs, sc, _ in stored}
    lost = sum(1 for s in sent_all if s not in stored_set)
    crossed = sum(1 for r, cs, sc, cm in stored if cm != f"{r}:{cs}" or sc != _expected(r, cs))
    extra = len(stored) - len(sent_all)
    head = (f"{'phase':<22} {'readers':>7} {'submits':>8} {'per min':>10} {'median s':>9} {'p95 s':>8} {'max s':>8}")
    return "\n".join([
        f"Reading server load: {a.readers} readers, {a.cases} cases (256x256x24) x 2 sessions each, think time "
        f"{a.think_min}-{a.think_max} s, {os.cpu_count()} CPUs; time = Submit to the next case's state (image loaded "
        "on the server)", "",
        f"sign-in of all readers incl. starting their stations: {start_s:.1f} s; stations' memory {rss:.0f} MB "
        f"({rss / a.readers:.0f} MB per reader)", "", head, *rows, "",
        f"store: {len(stored)} submitted reads, lost answers {lost}, crossed answers {crossed}, reads without a "
        f"client submit {extra}"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readers", type=int, default=20)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=90)
    ap.add_argument("--think-min", type=float, default=1.0)
    ap.add_argument("--think-max", type=float, default=3.0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "reading_server_cpu2.txt"))
    a = ap.parse_args()
    text = asyncio.run(run(a))
    print(text)
    Path(a.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
