"""`llnassist batch` over real phantom cases: a broken case among good ones, resume without
touching finished cases, SIGKILL mid-batch then resume, and the same batch on a Dask LocalCluster
started by the test."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, run_cli

from LLNAssistLib import phantom

FAST = ["--device", "cpu", "--no-radiomics", "--no-report-images", "--quiet"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort")
    rows = []
    for i, seed in enumerate((910301, 910302)):
        phantom.write(phantom.generate(seed, size=256, slices=24, n_nodes=3), d / f"P{i}")
        rows.append({"case_id": f"P{i}", "image": f"P{i}/image.nii.gz", "centre": "A" if i == 0 else "B"})
    (d / "broken.nii.gz").write_bytes(b"not an image")
    rows.append({"case_id": "BROKEN", "image": "broken.nii.gz", "centre": "=HYPERLINK(\"x\")"})
    with open(d / "cases.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case_id", "image", "centre"])
        w.writeheader()
        w.writerows(rows)
    return d


def _rows(path):
    with open(path, newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def _digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns


def test_a_broken_case_is_listed_the_others_finish_and_a_rerun_touches_nothing_finished(cases, tmp_path):
    out = tmp_path / "batch"
    p = run_cli("batch", cases / "cases.csv", "--out", out, *FAST, check_rc=3)
    assert "failed: BROKEN: cannot read image" in p.stderr
    rows = _rows(out / "cohort.csv")
    assert set(rows) == {"P0", "P1", "BROKEN"}
    assert rows["BROKEN"]["status"] == "failed" and rows["BROKEN"]["error"].startswith("cannot read image")
    assert rows["BROKEN"]["centre"].startswith("'=")  # passed through, not runnable as a spreadsheet formula
    for cid in ("P0", "P1"):
        summary = (out / "cases" / cid / "summary.json").read_text(encoding="utf-8")
        assert rows[cid]["status"] == "ok" and rows[cid]["n_nodes"] in summary
        assert rows[cid]["model_id"] == "llnassist-phantom-dynunet25d"
    with open(out / "nodes.csv", newline="") as f:
        nodes = list(csv.DictReader(f))
    assert list(nodes[0])[0] == "case_id"
    assert len(nodes) == sum(int(rows[c]["n_nodes"]) for c in ("P0", "P1"))
    before = {c: _digest(out / "cases" / c / "summary.json") for c in ("P0", "P1")}
    p = run_cli("batch", cases / "cases.csv", "--out", out, "--device", "cpu", "--no-radiomics", check_rc=3)
    assert "3 cases: 2 done (2 already), 1 failed" in p.stdout
    assert {c: _digest(out / "cases" / c / "summary.json") for c in ("P0", "P1")} == before


def test_a_batch_killed_mid_case_resumes(cases, tmp_path):
    out = tmp_path / "batch"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "LLNAssistLib.cli", "batch", str(cases / "cases.csv"), "--out",
                             str(out), *FAST], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (out / "cases" / "P0" / "summary.json").exists() and time.time() - t0 < 300:
        time.sleep(0.05)
    time.sleep(1.0)  # P1 is in flight now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "cases" / "P0" / "summary.json").exists() and not (out / "cases" / "P1" / "summary.json").exists()
    done = _digest(out / "cases" / "P0" / "summary.json")
    run_cli("batch", cases / "cases.csv", "--out", out, *FAST, check_rc=3)
    assert _digest(out / "cases" / "P0" / "summary.json") == done
    assert (out / "cases" / "P1" / "summary.json").exists()
    assert not list((out / "cases").glob(".*partial*"))
    assert _rows(out / "cohort.csv")["P1"]["status"] == "ok"


def test_dask_local_cluster_gives_the_local_result(cases, tmp_path):
    from dask.distributed import LocalCluster

    from LLNAssistLib import batch

    good = tmp_path / "good.csv"
    good.write_text("".join(line for line in (cases / "cases.csv").read_text(encoding="utf-8").splitlines(keepends=True)
                            if "BROKEN" not in line).replace("P0/", f"{cases}/P0/").replace("P1/", f"{cases}/P1/"))
    opts = {"device": "cpu", "radiomics": False, "key_images": False}
    local = batch.run(str(good), str(tmp_path / "local"), opts)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        dist = batch.run(str(good), str(tmp_path / "dask"), opts, scheduler=cluster.scheduler_address)
    assert local["failed"] == dist["failed"] == 0 and dist["analysed"] == 2
    a, b = _rows(tmp_path / "local" / "cohort.csv"), _rows(tmp_path / "dask" / "cohort.csv")
    for cid in ("P0", "P1"):
        for k in ("status", "patient_status", "n_nodes", "n_positive", "max_short_axis_mm"):
            assert a[cid][k] == b[cid][k], (cid, k)
    local_nodes = (tmp_path / "local" / "nodes.csv").read_text(encoding="utf-8")
    assert local_nodes == (tmp_path / "dask" / "nodes.csv").read_text(encoding="utf-8")


def test_batch_usage_errors_exit_2(tmp_path):
    (tmp_path / "c.csv").write_text("case_id,image\n../evil,x.nii.gz\n")
    p = run_cli("batch", tmp_path / "c.csv", "--out", tmp_path / "o", check_rc=2)
    assert "not a safe folder name" in p.stderr
    (tmp_path / "d.csv").write_text("case,image\nA,x\n")
    assert "lacks column(s) case_id" in run_cli("batch", tmp_path / "d.csv", "--out", tmp_path / "o", check_rc=2).stderr
    (tmp_path / "e.csv").write_text("case_id,image\nA,x.nii.gz\n")
    p = run_cli("batch", tmp_path / "e.csv", "--out", tmp_path / "o", "--scheduler", "tcp://127.0.0.1:9", check_rc=2)
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in p.stderr
