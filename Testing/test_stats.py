"""Reader-study statistics against published numbers (shared/reference-data/README.md)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import run_cli

from LLNAssistLib.stats import roc


@pytest.fixture(scope="module")
def vandyke(reference_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("vd") / "vd.json"
    run_cli("study", "analyze", reference_dir / "vandyke_mrmc.csv", "--out", out, check_rc=0)
    return json.loads(out.read_text(encoding="utf-8"))


def test_vandyke_reader_aucs(vandyke):
    m1 = [.91964573, .85877617, .90386473, .97310789, .82979066]
    m2 = [.94782609, .90531401, .92173913, .99935588, .92995169]
    for k, (a, b) in enumerate(zip(m1, m2), start=1):
        assert vandyke["readers"][str(k)]["1"]["auc"] == pytest.approx(a, abs=5e-9)
        assert vandyke["readers"][str(k)]["2"]["auc"] == pytest.approx(b, abs=5e-9)
    assert vandyke["modalities"]["1"]["mean_auc"] == pytest.approx(0.89703704, abs=5e-9)
    assert vandyke["modalities"]["2"]["mean_auc"] == pytest.approx(0.94083736, abs=5e-9)


def test_vandyke_or_jackknife(vandyke):
    o = vandyke["mrmc"]["or_jackknife"]
    r = o["rrrc"]
    assert r["f"] == pytest.approx(4.4563186932, rel=1e-7)
    assert r["df2"] == pytest.approx(15.2596745891, rel=1e-7)
    assert r["p"] == pytest.approx(0.0516656858, rel=1e-6)
    assert r["diff"] == pytest.approx(-0.04380032, abs=5e-9)
    assert r["ci"] == pytest.approx([-0.0879594986, 0.0003588544], abs=1e-9)
    for k, v in (("var", .0008022883), ("cov1", .0003466137), ("cov2", .0003440748), ("cov3", .0002390284)):
        assert o[k] == pytest.approx(v, rel=1e-6), k
    f = o["frrc"]
    assert f["chi2"] == pytest.approx(5.4759532425, rel=1e-7) and f["p"] == pytest.approx(0.0192798431, rel=1e-6)
    assert f["ci"] == pytest.approx([-0.0804859139, -0.0071147303], abs=1e-9)
    assert o["rrfc"]["f"] == pytest.approx(8.704, rel=1e-6) and o["rrfc"]["p"] == pytest.approx(0.0419587525, rel=1e-6)
    assert (o["rrfc"]["df1"], o["rrfc"]["df2"]) == (1, 4)


def test_vandyke_or_delong_and_dbm(vandyke):
    r = vandyke["mrmc"]["or_delong"]["rrrc"]
    assert r["f"] == pytest.approx(4.484854, rel=1e-6)
    assert r["df2"] == pytest.approx(15.06611, rel=1e-6)
    assert r["p"] == pytest.approx(0.05123303, rel=1e-6)
    assert r["ci"] == pytest.approx([-0.0878671960, 0.0002665519], abs=1e-9)
    d = vandyke["mrmc"]["dbm"]["rrrc"]
    assert d["f"] == pytest.approx(4.4563186932, rel=1e-7) and d["df2"] == pytest.approx(15.2596745891, rel=1e-7)
    assert d["p"] == pytest.approx(0.0516656858, rel=1e-6)


@pytest.fixture(scope="module")
def asah(reference_dir):
    with open(reference_dir / "proc_asah.csv") as f:
        rows = list(csv.DictReader(f))
    truth = np.array([r["outcome"] == "Poor" for r in rows])
    cols = {k: np.array([float(r[k]) for r in rows]) for k in ("wfns", "ndka", "s100b")}
    return truth, cols


def test_proc_asah_delong(asah):
    truth, c = asah
    d = roc.delong([c["wfns"], c["ndka"], c["s100b"]], truth)
    assert d.aucs == pytest.approx([0.823678861788618, 0.611957994579946, 0.731368563686], abs=1e-12)
    assert np.diag(d.cov) == pytest.approx([0.00146991470882363, 0.0031908105493913, 0.00266868245717244], rel=1e-10)
    assert d.cov[0, 1] == pytest.approx(-0.000532967856762438, rel=1e-10)
    assert d.cov[1, 2] == pytest.approx(-0.000756164938056579, rel=1e-10)
    assert d.cov[2, 0] == pytest.approx(0.00119615567376754, rel=1e-10)
    assert roc.auc_ci(d.aucs[1], d.cov[1, 1]) == pytest.approx((0.501244999271703, 0.722670989888189), abs=1e-12)


@pytest.mark.parametrize("a,b,z,p,ci", [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, [0.0104061769564846, 0.174214419249478]),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, [0.0634011709339876, 0.3600405634833566]),
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054, [-0.2876917446341914, 0.0488706064228094]),
])
def test_proc_asah_paired_delong(asah, a, b, z, p, ci):
    truth, c = asah
    t = roc.paired_test(c[a], c[b], truth)
    assert t["z"] == pytest.approx(z, rel=1e-10) and t["p"] == pytest.approx(p, rel=1e-9)
    assert t["ci"] == pytest.approx(ci, abs=1e-12)


def _write(tmp_path, text):
    p = tmp_path / "r.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,words", [
    ("reader,modality,case,rating\n1,a,1,3\n", "lacks column"),
    ("reader,modality,case,truth,rating\n1,a,1,1,high\n", "not a number"),
    ("reader,modality,case,truth,rating\n1,a,1,2,3\n", "0 or 1"),
    ("reader,modality,case,truth,rating\n1,a,1,1,3\n1,a,2,0,2\n", "exactly two"),
    ("reader,modality,case,truth,rating\n1,a,1,1,3\n1,a,2,0,2\n1,b,1,1,3\n", "missing"),
    ("reader,modality,case,truth,rating\n", "no rows"),
])
def test_bad_ratings_files(tmp_path, text, words):
    p = run_cli("study", "analyze", _write(tmp_path, text), "--out", tmp_path / "o.json")
    assert p.returncode == 2 and p.stderr.startswith("error: ") and words in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.json").exists()


def test_kappa_sas_example():
    from LLNAssistLib.stats.kappa import kappa_from_table

    t = [[0, 4, 1], [0, 8, 0], [0, 1, 5]]
    k = kappa_from_table(t)
    assert round(k["kappa"], 4) == 0.4842 and round(k["ase"], 4) == 0.1380
    assert [round(x, 4) for x in k["ci"]] == [0.2137, 0.7547]
    w = kappa_from_table(t, "linear")
    assert round(w["kappa"], 4) == 0.4701 and round(w["ase"], 4) == 0.1457
    assert [round(x, 4) for x in w["ci"]] == [0.1845, 0.7558]


def test_kappa_fixed_categories_and_study_output(vandyke):
    from LLNAssistLib.stats.kappa import kappa

    # identical ratings agree perfectly; on the fixed 1-5 scale, a 2-vs-5 disagreement is three steps,
    # whereas a table built from the observed categories (1, 2, 5) would call it one step
    assert kappa([1, 2, 3, 3], [1, 2, 3, 3], "quadratic")["kappa"] == pytest.approx(1.0)
    a, b = [1, 1, 1, 2, 2, 5, 5], [2, 1, 1, 2, 5, 5, 2]
    fixed = kappa(a, b, "linear")["kappa"]
    observed = kappa(a, b, "linear", categories=(1, 2, 5))["kappa"]
    assert fixed != pytest.approx(observed)
    # Van Dyke: 5 readers -> 10 pairs per modality, each with three weightings
    assert len(vandyke["kappa"]) == 20
    row = vandyke["kappa"][0]
    assert {"unweighted", "linear", "quadratic"} <= set(row) and -1 <= row["linear"]["kappa"] <= 1


def test_operating_points_with_exact_intervals(vandyke, reference_dir):
    from scipy.stats import binomtest

    with open(reference_dir / "vandyke_mrmc.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["reader"] == "1" and r["modality"] == "1"]
    truth = np.array([int(r["truth"]) for r in rows])
    rating = np.array([float(r["rating"]) for r in rows])
    got = {p["threshold"]: p for p in vandyke["readers"]["1"]["1"]["operating_points"]}
    for th in (3.0, 4.0):
        tp = int(((rating >= th) & (truth == 1)).sum())
        tn = int(((rating < th) & (truth == 0)).sum())
        p = got[th]
        assert (p["tp"], p["tn"]) == (tp, tn) and p["tp"] + p["fn"] == 45 and p["tn"] + p["fp"] == 69
        assert p["sensitivity"] == pytest.approx(tp / 45)
        ci = binomtest(tp, 45).proportion_ci(0.95, method="exact")
        assert p["sensitivity_ci"] == pytest.approx([ci.low, ci.high], abs=1e-12)
        ci = binomtest(tn, 69).proportion_ci(0.95, method="exact")
        assert p["specificity_ci"] == pytest.approx([ci.low, ci.high], abs=1e-12)


def test_roc_curve_and_html_report(vandyke, tmp_path, reference_dir):
    fpr, tpr = roc.roc_curve([1, 2, 3, 4], [0, 0, 1, 1])
    assert list(fpr) == [0, 0, 0, 0.5, 1] and list(tpr) == [0, 0.5, 1, 1, 1]
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc.auc([1, 2, 3, 4], [0, 0, 1, 1]))
    # the report is written beside the JSON by default
    run_cli("study", "analyze", reference_dir / "vandyke_mrmc.csv", "--out", tmp_path / "s.json", check_rc=0)
    page = (tmp_path / "s.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 2  # ROC curves, kappa heat map
    assert "0.920 (" in page and "F(1, 15.26) = 4.456" in page
