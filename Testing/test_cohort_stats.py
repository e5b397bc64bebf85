"""Cohort statistics against R run in the test (survival, pROC, rms, glmnet from Debian), the
decision curves of R dcurves in ../shared/reference-data/, and a simulation with known hazard
ratios. Bad data through the real CLI."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from conftest import REPO, run_cli

from LLNAssistLib import cohort
from LLNAssistLib.stats import cohort as S
from LLNAssistLib.stats import refit as RF
from LLNAssistLib.stats import survival as SV

DATA = REPO / "Testing" / "data"


def R(code: str) -> list:
    """Numbers R prints with cat(), one per line, at full precision."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        pytest.fail("Rscript not found: install Debian's r-base-core and r-cran-survival/proc/glmnet/rms "
                    "(scripts/test.sh does)")
    p = subprocess.run([rscript, "-e", "options(digits=15)\n" + code], capture_output=True, text=True, timeout=300,
                       cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:]
    return [float(x) if x != "NA" else None for x in p.stdout.split()]


def test_kaplan_meier_logrank_and_cox_equal_r_on_lung():
    res = cohort.survival(str(DATA / "lung.csv"), "time", "event", "sex", ["age"], [180, 365, 364.999])
    r = R(f"""library(survival); d <- read.csv("{DATA / 'lung.csv'}")
    f <- survfit(Surv(time, event) ~ sex, data=d); s <- summary(f, times=c(180, 365))
    cat(s$surv, s$lower, s$upper, summary(f)$table[, "median"], sep="\\n")
    cat(survdiff(Surv(time, event) ~ sex, data=d)$chisq, "\\n")
    m <- coxph(Surv(time, event) ~ sex + age, data=d, ties="efron"); cm <- summary(m)$coefficients
    cat(cm[, "coef"], cm[, "se(coef)"], cm[, "Pr(>|z|)"], exp(confint(m)), m$concordance["concordance"], sep="\\n")
    u <- summary(coxph(Surv(time, event) ~ age, data=d))$coefficients; cat(u[1, "coef"], u[1, "Pr(>|z|)"], "\\n")""")
    km = res["km"]
    got = [km[g]["at"][t]["survival"] for g in ("female", "male") for t in ("180", "365")]
    lower = [km[g]["at"][t]["lower"] for g in ("female", "male") for t in ("180", "365")]
    upper = [km[g]["at"][t]["upper"] for g in ("female", "male") for t in ("180", "365")]
    assert np.allclose(got, r[0:4], rtol=1e-10) and np.allclose(lower, r[4:8], rtol=1e-10)
    assert np.allclose(upper, r[8:12], rtol=1e-10)
    assert [km["female"]["median"], km["male"]["median"]] == r[12:14]
    # survival at T includes the events at exactly T: 364.999 differs from 365 when a death is at 365
    assert km["male"]["at"]["364.999"]["survival"] >= km["male"]["at"]["365"]["survival"]
    assert res["logrank"]["chi2"] == pytest.approx(r[14], rel=1e-10) and res["logrank"]["df"] == 1
    mv = res["cox"]["multivariable"]
    assert [mv["sex[male]"]["coef"], mv["age"]["coef"]] == pytest.approx(r[15:17], rel=1e-8)
    assert [mv["sex[male]"]["se"], mv["age"]["se"]] == pytest.approx(r[17:19], rel=1e-7)
    assert [mv["sex[male]"]["p"], mv["age"]["p"]] == pytest.approx(r[19:21], rel=1e-6)
    assert [mv["sex[male]"]["lower"], mv["age"]["lower"], mv["sex[male]"]["upper"], mv["age"]["upper"]] == \
        pytest.approx(r[21:25], rel=1e-7)
    assert res["cox"]["concordance"] == pytest.approx(r[25], rel=1e-10)
    assert res["cox"]["univariable"]["age"]["coef"] == pytest.approx(r[26], rel=1e-8)
    assert res["cox"]["univariable"]["age"]["p"] == pytest.approx(r[27], rel=1e-6)
    assert res["n"] == 228 and res["n_events"] == 165


def test_median_and_three_group_logrank_equal_r_on_aml_and_lung():
    res = cohort.survival(str(DATA / "aml.csv"), "time", "status", "x", [], [])
    r = R(f"""library(survival); d <- read.csv("{DATA / 'aml.csv'}")
    f <- survfit(Surv(time, status) ~ x, data=d); cat(summary(f)$table[, "median"], sep="\\n")
    cat(survdiff(Surv(time, status) ~ x, data=d)$chisq, "\\n")
    l <- read.csv("{DATA / 'lung.csv'}"); l$g <- cut(l$age, c(0, 60, 70, 100))
    cat(survdiff(Surv(time, event) ~ g, data=l)$chisq, "\\n")""")
    assert [res["km"]["Maintained"]["median"], res["km"]["Nonmaintained"]["median"]] == r[0:2]
    assert res["logrank"]["chi2"] == pytest.approx(r[2], rel=1e-10)
    import csv

    rows = list(csv.DictReader(open(DATA / "lung.csv")))
    g = ["a" if float(x["age"]) <= 60 else "b" if float(x["age"]) <= 70 else "c" for x in rows]
    lr = SV.logrank([float(x["time"]) for x in rows], [int(x["event"]) for x in rows], g)
    assert lr["df"] == 2 and lr["chi2"] == pytest.approx(r[3], rel=1e-10)  # full variance matrix


def test_median_takes_the_midpoint_where_survival_stays_at_one_half():
    km = SV.kaplan_meier([1, 2, 3, 4], [1, 1, 0, 1])  # S = 0.75, 0.5 (t=2..4), 0
    r = R('library(survival); cat(summary(survfit(Surv(c(1,2,3,4), c(1,1,0,1)) ~ 1))$table["median"])')
    assert km.median() == r[0] == 3.0


def test_hazard_ratio_ci_covers_the_truth_in_about_95_percent_of_seeded_repeats():
    rng = np.random.default_rng(20261201)
    beta = np.log([2.0, 0.7])
    hits = np.zeros(2)
    reps = 200
    for _ in range(reps):
        n = 150
        x = np.column_stack([rng.integers(0, 2, n), rng.normal(size=n)])
        t = rng.exponential(1 / np.exp(x @ beta))
        c = rng.exponential(1.5, n)
        time, ev = np.round(np.minimum(t, c), 2), (t <= c).astype(int)  # rounding makes ties
        tab = SV.cox(x, time, ev, ["g", "z"]).table()
        hits += [tab[k]["lower"] <= np.exp(b) <= tab[k]["upper"] for k, b in zip(("g", "z"), beta)]
    coverage = hits / reps
    assert np.all((coverage > 0.90) & (coverage < 0.99)), coverage


def test_auc_calibration_and_decision_curve_equal_r_and_dcurves(reference_dir):
    import csv

    rows = list(csv.DictReader(open(reference_dir / "dcurves_df_cancer_dx.csv")))
    y = np.array([int(r["cancer"]) for r in rows])
    p = np.array([float(r["cancerpredmarker"]) for r in rows])
    res = S.model_performance(y, p)
    miscal = S.calibration(y, p ** 1.5)  # a miscalibrated version: intercept and slope away from 0 and 1
    csv_path = reference_dir / "dcurves_df_cancer_dx.csv"
    r = R(f"""suppressMessages({{library(pROC); library(rms)}}); d <- read.csv("{csv_path}")
    a <- ci.auc(roc(d$cancer, d$cancerpredmarker, direction="<", quiet=TRUE), method="delong"); cat(a, sep="\\n")
    v <- val.prob(d$cancerpredmarker^1.5, d$cancer, pl=FALSE)
    cat(v["Intercept"], v["Slope"], v["Brier"], sep="\\n")""")
    assert [res["auc"]["lower"], res["auc"]["estimate"], res["auc"]["upper"]] == pytest.approx(r[0:3], rel=1e-10)
    assert [miscal["intercept"], miscal["slope"], miscal["brier"]] == pytest.approx(r[3:6], rel=1e-7)
    assert abs(r[3]) > 0.1 and abs(r[4] - 1) > 0.05
    ref = {(r_["variable"], round(float(r_["threshold"]), 2)): float(r_["net_benefit"])
           for r_ in csv.DictReader(open(reference_dir / "dcurves_r_dca_famhistory.csv"))}
    fam = np.array([float(r_["famhistory"]) for r_ in rows])
    dc = S.decision_curve(y, fam)
    n = 0
    for d in dc:
        for var, key in (("famhistory", "model"), ("all", "all")):
            if (var, d["threshold"]) in ref:
                assert d[key] == pytest.approx(ref[(var, d["threshold"])], abs=1e-10), (var, d["threshold"])
                n += 1
    assert n >= 150


def test_lasso_coefficients_equal_glmnet_at_a_fixed_lambda(reference_dir):
    import csv

    rows = list(csv.DictReader(open(reference_dir / "dcurves_df_cancer_dx.csv")))
    X = np.array([[float(r["age"]), float(r["marker"]), float(r["famhistory"])] for r in rows])
    y = np.array([int(r["cancer"]) for r in rows])
    r = R(f"""library(glmnet); d <- read.csv("{reference_dir / 'dcurves_df_cancer_dx.csv'}")
    f <- glmnet(as.matrix(d[, c("age","marker","famhistory")]), d$cancer, family="binomial", lambda=0.01,
                thresh=1e-14, maxit=1e7); cat(as.numeric(coef(f)), sep="\\n")""")
    b0, b = RF.lasso_logistic(X, y, 0.01)
    assert [b0, *b] == pytest.approx(r, rel=1e-5, abs=1e-7)


def test_combat_removes_a_centre_shift_and_keeps_the_signal():
    rng = np.random.default_rng(3)
    n = 240
    centre = np.repeat(["A", "B", "C"], n // 3)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 5)) + y[:, None] * 0.8
    shift = {"A": (0.0, 1.0), "B": (3.0, 2.0), "C": (-2.0, 0.5)}
    Xc = np.array([x * shift[c][1] + shift[c][0] for x, c in zip(X, centre)])
    H = RF.combat(Xc, centre)
    means = np.array([H[centre == c].mean(0) for c in "ABC"])
    sds = np.array([H[centre == c].std(0) for c in "ABC"])
    assert np.ptp(means, axis=0).max() < 0.3 and (sds.max(0) / sds.min(0)).max() < 1.3
    assert (H[y == 1].mean(0) - H[y == 0].mean(0)).min() > 0.4  # the outcome signal survives


def test_refit_gives_an_honest_auc_and_a_score_file_analyze_can_use(tmp_path):
    import csv

    rng = np.random.default_rng(7)
    n = 160
    X = rng.normal(size=(n, 4))
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * X[:, 0] - 1.0 * X[:, 1])))).astype(int)
    names = ["original_glcm_InverseVariance", "original_glcm_MCC", "original_ngtdm_Coarseness", "noise"]
    with open(tmp_path / "f.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "truth", "centre", *names])
        for i in range(n):
            w.writerow([f"C{i}", y[i], "AB"[i % 2], *X[i]])
    out = tmp_path / "refit.json"
    run_cli("cohort", "refit", tmp_path / "f.csv", "--truth", "truth", "--features", ",".join(names), "--center",
            "centre", "--seed", "3", "--out", out, "--report", tmp_path / "refit.html", check_rc=0)
    res = json.loads(out.read_text(encoding="utf-8"))
    assert 0.7 < res["outer_auc"]["estimate"] < 0.95
    coefs = res["score"]["coefficients"]
    assert coefs["original_glcm_InverseVariance"] > 0 and coefs["original_glcm_MCC"] < 0
    from LLNAssistLib.radiomics import load_score_file, score

    model = load_score_file(out)
    feats = {k: 0.1 for k in names}
    s = score(feats, score_model=model)
    want = model["intercept"] + sum(0.1 * v for v in model["coefficients"].values())
    assert s["radiomics_score"] == pytest.approx(want)
    again = tmp_path / "again.json"
    run_cli("cohort", "refit", tmp_path / "f.csv", "--truth", "truth", "--features", ",".join(names), "--center",
            "centre", "--seed", "3", "--out", again, check_rc=0)
    assert json.loads(again.read_text(encoding="utf-8")) == res  # seeded


def test_diagnostic_exact_intervals_kappa_and_heat_map(tmp_path):
    import csv

    rng = np.random.default_rng(5)
    truth = rng.integers(0, 2, 120)
    r1 = np.where(rng.random(120) < 0.85, truth, 1 - truth)
    r2 = np.where(rng.random(120) < 0.7, truth, 1 - truth)
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "truth", "model", "reader2"])
        w.writerows([[f"C{i}", truth[i], r1[i], r2[i]] for i in range(120)])
    out = tmp_path / "d.json"
    run_cli("cohort", "diagnostic", tmp_path / "d.csv", "--truth", "truth", "--pred", "model,reader2", "--out", out,
            "--report", tmp_path / "d.html", check_rc=0)
    res = json.loads(out.read_text(encoding="utf-8"))["predictions"]["model"]
    tp = int(((r1 == 1) & (truth == 1)).sum())
    fn = int(((r1 == 0) & (truth == 1)).sum())
    r = R(f"cat(binom.test({tp}, {tp + fn})$conf.int, sep='\\n')")
    assert [res["sensitivity"]["lower"], res["sensitivity"]["upper"]] == pytest.approx(r, rel=1e-9)
    assert res["sensitivity"]["estimate"] == tp / (tp + fn) and res["kappa"]["label"] in ("substantial", "moderate")
    assert "id='fig-kappa'" in (tmp_path / "d.html").read_text(encoding="utf-8")


def test_baseline_table_tests_match_r(tmp_path):
    r = R(f"""d <- read.csv("{DATA / 'lung.csv'}"); cat(t.test(age ~ sex, data=d)$p.value,
    wilcox.test(time ~ sex, data=d, exact=FALSE)$p.value, chisq.test(table(d$sex, d$event))$p.value, sep="\\n")""")
    res = cohort.table(str(DATA / "lung.csv"), "sex", ["age", "time", "event"], nonnormal=["time"])
    p = {v["variable"]: v["p"] for v in res["variables"]}
    assert [p["age"], p["time"], p["event"]] == pytest.approx(r, rel=1e-9)


@pytest.mark.parametrize("args, words", [
    (["survival", "{lung}", "--time", "days", "--event", "event"], "lacks column(s) days"),
    (["survival", "{bad_time}", "--time", "time", "--event", "event"], "row 3: time is 'soon'"),
    (["survival", "{bad_event}", "--time", "time", "--event", "event"], "row 2: event is '2'"),
    (["survival", "{lung}", "--time", "time", "--event", "event", "--join", "{other}"], "is not in"),
])
def test_bad_cohort_data_names_column_and_row(tmp_path, args, words):
    (tmp_path / "bad_time.csv").write_text("case_id,time,event\nA,1,1\nB,soon,0\n")
    (tmp_path / "bad_event.csv").write_text("case_id,time,event\nA,1,2\n")
    (tmp_path / "other.csv").write_text("case_id,x\nZZZ,1\n")
    paths = {"lung": DATA / "lung.csv", "bad_time": tmp_path / "bad_time.csv", "bad_event": tmp_path / "bad_event.csv",
             "other": tmp_path / "other.csv"}
    p = run_cli("cohort", *[a.format(**paths) for a in args], check_rc=2)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], lines


def test_categorical_confusion_matrix_for_the_compartment_of_the_positive_node(tmp_path):
    (tmp_path / "c.csv").write_text("case_id,truth,model\n" + "".join(
        f"C{i},{t},{m}\n" for i, (t, m) in enumerate([("OB", "OB"), ("OB", "II"), ("II", "II"), ("EI", "EI"),
                                                       ("II", "II"), ("OB", "OB")])))
    res = cohort.diagnostic(str(tmp_path / "c.csv"), "truth", ["model"])
    assert res["confusion"]["labels"] == ["EI", "II", "OB"]
    assert res["confusion"]["matrix"] == [[1, 0, 0], [0, 2, 0], [0, 1, 2]]
    assert res["accuracy"]["estimate"] == pytest.approx(5 / 6)


def test_every_subcommand_writes_its_html_report(tmp_path, reference_dir):
    lung = DATA / "lung.csv"
    dx = reference_dir / "dcurves_df_cancer_dx.csv"
    runs = {"survival": (["survival", lung, "--time", "time", "--event", "event", "--group", "sex", "--covariates",
                          "age", "--at", "180,365"], ("fig-kaplan-meier", "Numbers at risk", "Cox regression")),
            "model": (["model", dx, "--truth", "cancer", "--prob", "cancerpredmarker", "--key", "patientid"],
                      ("fig-calibration", "fig-decision-curve", "AUC")),
            "table": (["table", lung, "--by", "sex", "--vars", "age,time,event", "--nonnormal", "time"],
                      ("Welch t test", "Mann-Whitney U"))}
    for name, (args, words) in runs.items():
        page = tmp_path / f"{name}.html"
        run_cli("cohort", *args, "--out", tmp_path / f"{name}.json", "--report", page, check_rc=0)
        text = page.read_text(encoding="utf-8")
        assert all(w in text for w in words), (name, [w for w in words if w not in text])
        assert json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
