"""Cohort statistics of the source papers: diagnostic accuracy with exact intervals and kappa
(Qiao et al., Front Oncol 2025), discrimination, calibration and decision curves of a risk score
(Yoo et al., Sci Rep 2025), and the baseline table. Conventions follow what a statistician gets
in R: Clopper-Pearson intervals, DeLong AUC (pROC), logistic recalibration y ~ a + b logit(p)
(rms::val.prob), net benefit with "positive when risk > threshold" (dcurves), Welch's t test,
Mann-Whitney with continuity correction, chi-square with Yates' correction for 2 x 2, Fisher's exact
test for small expected counts.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy import stats

from . import kappa as K
from . import roc

LANDIS_KOCH = ((0.0, "poor"), (0.20, "slight"), (0.40, "fair"), (0.60, "moderate"), (0.80, "substantial"),
               (1.0, "almost perfect"))


def landis_koch(k: float) -> str:
    if k < 0:
        return "poor"
    for upper, label in LANDIS_KOCH[1:]:
        if k <= upper + 1e-12:
            return label
    return "almost perfect"


def _est(k: int, n: int) -> dict:
    lo, hi = roc.exact_ci(k, n)
    return {"estimate": k / n if n else None, "lower": lo if n else None, "upper": hi if n else None,
            "k": int(k), "n": int(n)}


def diagnostic(truth: Sequence[int], pred: Sequence[int]) -> dict:
    """2 x 2 accuracy of a binary call against the reference standard, exact 95% intervals, and
    Cohen's kappa between the call and the reference."""
    t = np.asarray(truth).astype(int)
    p = np.asarray(pred).astype(int)
    tp, fp = int(((p == 1) & (t == 1)).sum()), int(((p == 1) & (t == 0)).sum())
    tn, fn = int(((p == 0) & (t == 0)).sum()), int(((p == 0) & (t == 1)).sum())
    kap = K.kappa(t.tolist(), p.tolist(), "unweighted", categories=(0, 1))
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": tp + fp + tn + fn,
            "accuracy": _est(tp + tn, tp + fp + tn + fn), "sensitivity": _est(tp, tp + fn),
            "specificity": _est(tn, tn + fp), "ppv": _est(tp, tp + fp), "npv": _est(tn, tn + fn),
            "kappa": {"estimate": kap["kappa"], "lower": kap["ci"][0], "upper": kap["ci"][1], "se": kap["ase"],
                      "label": landis_koch(kap["kappa"])}}


def confusion(truth: Sequence, pred: Sequence, labels: Optional[Sequence] = None) -> dict:
    labels = list(labels) if labels is not None else sorted(set(map(str, truth)) | set(map(str, pred)))
    idx = {v: i for i, v in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), int)
    for a, b in zip(map(str, truth), map(str, pred)):
        m[idx[a], idx[b]] += 1
    return {"labels": labels, "rows": "reference", "columns": "prediction", "matrix": m.tolist()}


def kappa_matrix(columns: dict) -> dict:
    """Cohen's kappa between every pair of raters (binary or categorical calls)."""
    names = list(columns)
    cats = sorted({str(v) for col in columns.values() for v in col})
    m = np.eye(len(names))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i < j:
                k = K.kappa([str(v) for v in columns[a]], [str(v) for v in columns[b]], "unweighted",
                            categories=cats)["kappa"]
                m[i, j] = m[j, i] = k
    return {"raters": names, "kappa": m.tolist()}


# --- a risk score --------------------------------------------------------------------------------------------
def _logit(p):
    p = np.clip(np.asarray(p, float), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


def logistic_fit(X: np.ndarray, y: np.ndarray, max_iter: int = 100, tol: float = 1e-12) -> np.ndarray:
    """Maximum-likelihood logistic regression with an intercept (Newton-Raphson): [a, b...]."""
    A = np.column_stack([np.ones(len(y)), np.asarray(X, float)])
    beta = np.zeros(A.shape[1])
    for _ in range(max_iter):
        eta = A @ beta
        mu = 1 / (1 + np.exp(-eta))
        w = mu * (1 - mu)
        grad = A.T @ (y - mu)
        hess = A.T @ (A * w[:, None])
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.max(np.abs(step)) < tol:
            break
    return beta


def youden(truth, prob) -> dict:
    """The threshold (an observed value; positive when prob >= it) maximising sens + spec - 1."""
    t = np.asarray(truth).astype(bool)
    p = np.asarray(prob, float)
    best = None
    for c in np.unique(p):
        call = p >= c
        sens = (call & t).sum() / t.sum()
        spec = (~call & ~t).sum() / (~t).sum()
        j = sens + spec - 1
        if best is None or j > best[0] + 1e-15:
            best = (j, float(c), float(sens), float(spec))
    return {"cutoff": best[1], "youden_j": best[0], "sensitivity": best[2], "specificity": best[3]}


def calibration(truth, prob, bins: int = 10) -> dict:
    y = np.asarray(truth, float)
    p = np.asarray(prob, float)
    a, b = logistic_fit(_logit(p)[:, None], y)
    order = np.argsort(p, kind="stable")
    groups = np.array_split(order, min(bins, len(p)))
    curve = [{"predicted": float(p[g].mean()), "observed": float(y[g].mean()), "n": int(len(g))} for g in groups
             if len(g)]
    return {"intercept": float(a), "slope": float(b), "brier": float(np.mean((p - y) ** 2)), "curve": curve}


def decision_curve(truth, prob, thresholds: Optional[Sequence[float]] = None) -> list:
    """Net benefit of the model, treat all and treat none (positive when prob > threshold)."""
    y = np.asarray(truth).astype(bool)
    p = np.asarray(prob, float)
    n = len(y)
    prev = y.mean()
    out = []
    for pt in (np.round(np.arange(0, 1.0, 0.01), 2) if thresholds is None else thresholds):
        odds = pt / (1 - pt)
        call = p > pt
        tp, fp = (call & y).sum() / n, (call & ~y).sum() / n
        out.append({"threshold": float(pt), "model": float(tp - fp * odds), "all": float(prev - (1 - prev) * odds),
                    "none": 0.0})
    return out


def model_performance(truth, prob, cutoff: Optional[float] = None) -> dict:
    t = np.asarray(truth).astype(int)
    p = np.asarray(prob, float)
    d = roc.delong([p], t)
    a, var = float(d.aucs[0]), float(d.cov[0, 0])
    lo, hi = roc.auc_ci(a, var)
    y = youden(t, p)
    c = y["cutoff"] if cutoff is None else float(cutoff)
    call = p >= c
    tb = t.astype(bool)
    return {"n": int(len(t)), "n_positive": int(t.sum()),
            "auc": {"estimate": a, "lower": lo, "upper": hi, "se": math.sqrt(var)},
            "youden": y, "cutoff": c,
            "at_cutoff": {"sensitivity": float((call & tb).sum() / tb.sum()),
                          "specificity": float((~call & ~tb).sum() / (~tb).sum())},
            "calibration": calibration(t, p), "decision_curve": decision_curve(t, p)}


# --- baseline table -----------------------------------------------------------------------------------------
def _numeric(values) -> Optional[np.ndarray]:
    try:
        return np.array([float(v) for v in values])
    except (TypeError, ValueError):
        return None


def baseline_table(rows: list, by: str, variables: Sequence[str], nonnormal: Sequence[str] = ()) -> dict:
    """Qiao et al. Table 1 layout: per variable and group, mean ± SD (or median [IQR] for
    `nonnormal`) or n (%), and the p-value of the matching test."""
    groups = sorted({r[by] for r in rows}, key=str)
    out = {"by": by, "groups": {g: sum(r[by] == g for r in rows) for g in groups}, "variables": []}
    for var in variables:
        vals = {g: [r[var] for r in rows if r[by] == g and r[var] not in ("", None)] for g in groups}
        nums = {g: _numeric(v) for g, v in vals.items()}
        if all(x is not None for x in nums.values()) and len({v for vs in vals.values() for v in vs}) > 2:
            if var in nonnormal:
                cells = {g: f"{np.median(x):.1f} [{np.percentile(x, 25):.1f}, {np.percentile(x, 75):.1f}]"
                         for g, x in nums.items()}
                test = stats.mannwhitneyu(*nums.values(), alternative="two-sided", use_continuity=True) \
                    if len(groups) == 2 else stats.kruskal(*nums.values())
                name = "Mann-Whitney U" if len(groups) == 2 else "Kruskal-Wallis"
            else:
                cells = {g: f"{x.mean():.1f} ± {x.std(ddof=1):.1f}" for g, x in nums.items()}
                test = stats.ttest_ind(*nums.values(), equal_var=False) if len(groups) == 2 \
                    else stats.f_oneway(*nums.values())
                name = "Welch t test" if len(groups) == 2 else "one-way ANOVA"
            out["variables"].append({"variable": var, "kind": "continuous", "cells": cells, "test": name,
                                     "p": float(test.pvalue)})
            continue
        levels = sorted({str(v) for vs in vals.values() for v in vs})
        counts = np.array([[sum(str(v) == lev for v in vals[g]) for g in groups] for lev in levels])
        expected = counts.sum(1, keepdims=True) * counts.sum(0, keepdims=True) / max(counts.sum(), 1)
        if counts.shape == (2, 2) and (expected < 5).any():
            p, name = float(stats.fisher_exact(counts)[1]), "Fisher's exact test"
        else:
            chi = stats.chi2_contingency(counts, correction=True)
            p, name = float(chi[1]), "chi-square test" + (" (Yates)" if counts.shape == (2, 2) else "")
        cells = {lev: {g: f"{counts[i, j]} ({100 * counts[i, j] / max(counts[:, j].sum(), 1):.1f}%)"
                       for j, g in enumerate(groups)} for i, lev in enumerate(levels)}
        out["variables"].append({"variable": var, "kind": "categorical", "cells": cells, "test": name, "p": p})
    return out
