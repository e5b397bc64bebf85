"""Empirical ROC AUC with DeLong (1988) variance/covariance, CIs and the paired test.

Placement values: for diseased case x_i, V10_i = mean over non-diseased y_j of psi(x_i, y_j);
for non-diseased y_j, V01_j = mean over diseased x_i of psi(x_i, y_j); psi = 1 if x > y,
0.5 if equal, 0 otherwise. AUC = mean(V10) = mean(V01).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


def _psi(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    d = pos[:, None] - neg[None, :]
    return (d > 0) + 0.5 * (d == 0)


def placements(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, float)
    truth = np.asarray(truth).astype(bool)
    psi = _psi(scores[truth], scores[~truth])
    return psi.mean(1), psi.mean(0)


def auc(scores, truth) -> float:
    v10, _ = placements(scores, truth)
    return float(v10.mean())


@dataclass
class DeLong:
    aucs: np.ndarray  # (k,)
    cov: np.ndarray  # (k, k)


def delong(score_sets: list, truth) -> DeLong:
    """AUCs and their DeLong covariance matrix for k ratings of the same cases."""
    comps = [placements(s, truth) for s in score_sets]
    v10 = np.array([c[0] for c in comps])  # (k, m)
    v01 = np.array([c[1] for c in comps])  # (k, n)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if len(score_sets) > 1 else np.array([[np.var(v10[0], ddof=1)]])
    s01 = np.atleast_2d(np.cov(v01)) if len(score_sets) > 1 else np.array([[np.var(v01[0], ddof=1)]])
    return DeLong(v10.mean(1), s10 / m + s01 / n)


def auc_ci(a: float, var: float, level: float = 0.95) -> tuple[float, float]:
    z = stats.norm.ppf(0.5 + level / 2)
    se = np.sqrt(var)
    return float(max(0.0, a - z * se)), float(min(1.0, a + z * se))


def paired_test(scores_a, scores_b, truth, level: float = 0.95) -> dict:
    return paired_from(delong([scores_a, scores_b], truth), level)


def paired_from(d: DeLong, level: float = 0.95) -> dict:
    """Paired DeLong test of the first two AUCs of an already computed DeLong result."""
    diff = float(d.aucs[0] - d.aucs[1])
    var = float(d.cov[0, 0] + d.cov[1, 1] - 2 * d.cov[0, 1])
    z = diff / np.sqrt(var) if var > 0 else 0.0
    p = float(2 * stats.norm.sf(abs(z)))
    q = stats.norm.ppf(0.5 + level / 2)
    return {"auc_diff": diff, "z": float(z), "p": p, "ci": [diff - q * np.sqrt(var), diff + q * np.sqrt(var)]}


def exact_ci(k: int, n: int, level: float = 0.95) -> list:
    """Clopper-Pearson interval for k successes in n trials."""
    if n == 0:
        return [float("nan"), float("nan")]
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return [lo, hi]


def operating_point(scores, truth, threshold: float, level: float = 0.95) -> dict:
    """Sensitivity, specificity and accuracy of calling `score >= threshold` positive, exact CIs."""
    scores = np.asarray(scores, float)
    truth = np.asarray(truth).astype(bool)
    call = scores >= threshold
    tp, fn = int((call & truth).sum()), int((~call & truth).sum())
    tn, fp = int((~call & ~truth).sum()), int((call & ~truth).sum())
    n = tp + fn + tn + fp
    return {"threshold": threshold, "tp": tp, "fn": fn, "tn": tn, "fp": fp,
            "sensitivity": tp / (tp + fn) if tp + fn else float("nan"), "sensitivity_ci": exact_ci(tp, tp + fn, level),
            "specificity": tn / (tn + fp) if tn + fp else float("nan"), "specificity_ci": exact_ci(tn, tn + fp, level),
            "accuracy": (tp + tn) / n if n else float("nan"), "accuracy_ci": exact_ci(tp + tn, n, level)}


def roc_curve(scores, truth) -> tuple[np.ndarray, np.ndarray]:
    """Empirical ROC points (FPR, TPR) from (inf, 0) to (1, 1), one per distinct rating."""
    scores = np.asarray(scores, float)
    truth = np.asarray(truth).astype(bool)
    ths = np.r_[np.inf, np.unique(scores)[::-1]]
    tpr = np.array([(scores[truth] >= t).mean() for t in ths])
    fpr = np.array([(scores[~truth] >= t).mean() for t in ths])
    return fpr, tpr
