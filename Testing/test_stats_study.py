"""Study-level statistics checked against simulation (independent truth for estimators that have
no published worked example here): clustered ROC variance, power, and the ratings-CSV extras."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli
from scipy import stats

from LLNAssistLib.stats import clustered, power, roc
from LLNAssistLib.stats.readerstudy_analysis import analyze_rows, read_ratings


def _clustered_sample(rng, n_clusters=50, k=3):
    cl = np.repeat(np.arange(n_clusters), k)
    patient = rng.random(n_clusters) < 0.4
    truth = np.where(rng.random(n_clusters * k) < 0.8, np.repeat(patient, k), rng.random(n_clusters * k) < 0.3)
    shared = np.repeat(rng.normal(0, 1.0, n_clusters), k)  # the patient's own signal level
    a = shared + 1.0 * truth + rng.normal(0, 1, n_clusters * k)
    b = shared + 1.4 * truth + rng.normal(0, 1, n_clusters * k)
    return a, b, truth.astype(int), cl


def test_clustered_variance_matches_simulation_where_delong_does_not():
    rng = np.random.default_rng(1)
    aucs, est, naive, diffs, diff_var = [], [], [], [], []
    for _ in range(1200):
        a, b, t, c = _clustered_sample(rng)
        r = clustered.clustered_auc([a, b], t, c)
        aucs.append(r["aucs"][0])
        est.append(r["cov"][0][0])
        naive.append(roc.delong([a], t).cov[0, 0])
        diffs.append(r["paired"]["auc_diff"])
        diff_var.append(r["paired"]["se"] ** 2)
    emp = np.var(aucs)
    assert np.mean(est) == pytest.approx(emp, rel=0.15)
    assert np.mean(naive) < 0.8 * emp  # ignoring the clustering understates the variance
    assert np.mean(diff_var) == pytest.approx(np.var(diffs), rel=0.15)


def test_clustered_auc_equals_plain_auc_and_singletons_approach_delong():
    rng = np.random.default_rng(4)
    x = rng.normal(size=80)
    t = (rng.random(80) < 0.4).astype(int)
    x = x + t
    r = clustered.clustered_auc([x], t, np.arange(80))
    d = roc.delong([x], t)
    assert r["aucs"][0] == pytest.approx(d.aucs[0], abs=1e-12)
    assert r["cov"][0][0] == pytest.approx(d.cov[0, 0], rel=0.05)
    with pytest.raises(ValueError):
        clustered.clustered_auc([x], np.ones(80), np.arange(80))


@pytest.mark.parametrize("readers,cases,effect", [(5, 100, 0.05), (8, 60, 0.06)])
def test_power_matches_monte_carlo_of_the_or_model(readers, cases, effect):
    """Simulate reader AUCs from the OR model with the given components; the rejection rate of the
    OR F test (Hillis ddf) must match the closed-form power."""
    comp = {"var_tr": 0.0004, "var": 0.0016, "cov1": 0.0008, "cov2": 0.0006, "cov3": 0.0004, "n_cases": 100}
    pw = power.power(comp, readers, cases, effect)["power"]
    rng = np.random.default_rng(2)
    s = comp["n_cases"] / cases
    v, c1, c2, c3 = (comp[k] * s for k in ("var", "cov1", "cov2", "cov3"))
    idx = [(i, j) for i in range(2) for j in range(readers)]
    cov = np.array([[v if p == q else c1 if p[1] == q[1] else c2 if p[0] == q[0] else c3 for q in idx] for p in idx])
    chol = np.linalg.cholesky(cov)
    n, rejected = 4000, 0
    for _ in range(n):
        th = (np.array([0.8 + effect / 2, 0.8 - effect / 2])[:, None] + rng.normal(0, 0.03, readers)[None, :]
              + rng.normal(0, np.sqrt(comp["var_tr"]), (2, readers))
              + (chol @ rng.normal(size=2 * readers)).reshape(2, -1))
        mt, g = th.mean(1), th.mean()
        ms_t = readers * ((mt - g) ** 2).sum()
        ms_tr = ((th - mt[:, None] - th.mean(0)[None, :] + g) ** 2).sum() / (readers - 1)
        den = ms_tr + readers * max(c2 - c3, 0)
        rejected += ms_t / den > stats.f.ppf(0.95, 1, den ** 2 / (ms_tr ** 2 / (readers - 1)))
    assert rejected / n == pytest.approx(pw, abs=0.04)


def test_power_is_monotone_and_cases_needed_reaches_target():
    comp = {"var_tr": 0.0004, "var": 0.0016, "cov1": 0.0008, "cov2": 0.0006, "cov3": 0.0004, "n_cases": 100}
    p = [power.power(comp, 5, c, 0.05)["power"] for c in (50, 100, 200, 400)]
    assert p == sorted(p) and power.power(comp, 5, 100, 0.0)["power"] == pytest.approx(0.05, abs=1e-9)
    n = power.cases_needed(comp, 6, 0.08, 0.8)
    assert power.power(comp, 6, n, 0.08)["power"] >= 0.8 > power.power(comp, 6, n - 1, 0.08)["power"]


def test_power_cli_on_van_dyke_pilot(reference_dir, tmp_path):
    out = tmp_path / "power.json"
    p = run_cli("study", "power", reference_dir / "vandyke_mrmc.csv", "--effect", "0.05", "--readers", "5,10",
                "--cases", "114,300", "--out", out, check_rc=0)
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["pilot"] == {"readers": 5, "cases": 114, "covariance": "delong",
                            "observed_auc_diff": pytest.approx(-0.04380032, abs=1e-6)}
    grid = {(g["readers"], g["cases"]): g["power"] for g in res["grid"]}
    assert grid[(5, 114)] < grid[(5, 300)] and grid[(5, 114)] < grid[(10, 114)]
    assert "cases for power 0.8" in p.stdout
    bad = run_cli("study", "power", reference_dir / "vandyke_mrmc.csv", "--effect", "2")
    assert bad.returncode == 2 and bad.stderr.startswith("error:")


def test_ratings_csv_with_calls_ai_and_nodes(tmp_path):
    """Node-level CSV: the patient level takes the highest-rated node; sensitivity of the binary call
    and the AI's AUC are checked by counting."""
    rng = np.random.default_rng(5)
    lines = ["reader,modality,case,truth,rating,call,ai_probability,ai_status,node"]
    expect_tp = {}
    for case in range(30):
        pos_patient = case % 3 == 0
        prob = 0.9 if pos_patient else 0.1 + 0.01 * case
        for rd in ("A", "B"):
            for m in ("unaided", "aided"):
                ratings = []
                for node in range(2):
                    t = int(pos_patient and node == 0)
                    r = int(np.clip(round(2 + 2 * t + rng.normal(0, 0.8)), 1, 5))
                    ratings.append(r)
                    lines.append(f"{rd},{m},C{case},{t},{r},{'yes' if r >= 4 else 'no'},{prob},"
                                 f"{'positive' if pos_patient else 'negative'},N{node}")
                if pos_patient and max(ratings) >= 4:
                    expect_tp[(rd, m)] = expect_tp.get((rd, m), 0) + 1
    f = tmp_path / "nodes.csv"
    f.write_text("\n".join(lines) + "\n")
    res, _ = analyze_rows(read_ratings(f))
    assert res["unit"].startswith("patient") and res["n_cases"] == 30 and res["n_diseased"] == 10
    for (rd, m), tp in expect_tp.items():
        assert res["binary_call"][rd][m]["tp"] == tp
    assert res["ai"]["probability"]["auc"] == 1.0 and res["ai"]["status"]["sensitivity"] == 1.0
    assert res["node_level"]["A"]["aided"]["n_nodes"] == 60 and res["node_level"]["A"]["aided"]["n_patients"] == 30
    assert "p" in res["node_level"]["A"]["paired"]
    k = [r for r in res["kappa_vs_ai"] if r["reader"] == "A" and r["modality"] == "aided"][0]
    assert -1 <= k["call_vs_status"]["kappa"] <= 1
    bad = tmp_path / "bad.csv"
    bad.write_text("reader,modality,case,truth,rating,call\nA,u,C1,1,3,maybe\n")
    p = run_cli("study", "analyze", bad, "--out", tmp_path / "o.json")
    assert p.returncode == 2 and "yes or no" in p.stderr


def test_identical_readers_give_defined_json_not_nan(tmp_path):
    """Two readers with identical ratings: MS(T*R) = 0, so Hillis' ddf is infinite (chi-square
    limit) and the fixed-case F is undefined; the JSON must stay valid (null, never NaN)."""
    rng = np.random.default_rng(1)
    truth = (rng.random(30) < 0.4).astype(int)
    lines = ["reader,modality,case,truth,rating"]
    for m, sep in (("unaided", 1.0), ("aided", 2.0)):
        scores = np.clip(np.round(2.5 + sep * truth + rng.normal(0, 1, 30)), 1, 5).astype(int)
        for rd in ("A", "B"):
            lines += [f"{rd},{m},c{i},{truth[i]},{scores[i]}" for i in range(30)]
    f = tmp_path / "same.csv"
    f.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o.json"
    p = run_cli("study", "analyze", f, "--out", out, check_rc=0)
    assert "undefined" not in p.stderr
    res = json.loads(out.read_text(encoding="utf-8"), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    rrrc = res["mrmc"]["or_delong"]["rrrc"]
    assert rrrc["df2"] is None and 0 <= rrrc["p"] <= 1
    assert res["mrmc"]["or_delong"]["rrfc"]["f"] is None
    # the chi-square limit equals the F test with a huge ddf
    assert rrrc["p"] == pytest.approx(stats.f.sf(rrrc["f"], 1, 1e9), rel=1e-6)
