"""Clustered ROC (Obuchowski 1997, Biometrics 53:567-578): node-level AUC when one patient
contributes several nodes, so nodes of a patient are not treated as independent.

For cluster (patient) i with m_i diseased and n_i non-diseased units, the placement sums
V10_i (diseased units' placements against all non-diseased units) and V01_i give
z_i = (V10_i - m_i A) / M + (V01_i - n_i A) / N, and
Cov(A) = I / (I - 1) * sum_i z_i z_i^T   (M, N: all diseased / non-diseased units; I clusters),
which is Obuchowski's S10/M + S01/N + 2 S11/(MN), written for several modalities at once.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from .roc import auc_ci


def clustered_auc(score_sets, truth, clusters, level: float = 0.95) -> dict:
    """AUCs, covariance and (for two score sets) the paired z test, scores of the same units."""
    scores = np.atleast_2d(np.asarray(score_sets, float))
    truth = np.asarray(truth).astype(bool)
    clusters = np.asarray(clusters)
    if truth.all() or not truth.any():
        raise ValueError("clustered ROC needs diseased and non-diseased units")
    ids, inv = np.unique(clusters, return_inverse=True)
    n_clusters = len(ids)
    if n_clusters < 2:
        raise ValueError("clustered ROC needs at least two clusters")
    m, n = int(truth.sum()), int((~truth).sum())
    k = scores.shape[0]
    z = np.zeros((n_clusters, k))
    aucs = np.zeros(k)
    for j in range(k):
        pos, neg = scores[j, truth], scores[j, ~truth]
        d = pos[:, None] - neg[None, :]
        psi = (d > 0) + 0.5 * (d == 0)
        v10, v01 = psi.mean(1), psi.mean(0)
        a = v10.mean()
        aucs[j] = a
        c_pos, c_neg = inv[truth], inv[~truth]
        u = np.bincount(c_pos, weights=v10, minlength=n_clusters) - a * np.bincount(c_pos, minlength=n_clusters)
        w = np.bincount(c_neg, weights=v01, minlength=n_clusters) - a * np.bincount(c_neg, minlength=n_clusters)
        z[:, j] = u / m + w / n
    cov = n_clusters / (n_clusters - 1) * z.T @ z
    out = {"aucs": aucs.tolist(), "cov": cov.tolist(), "n_units": int(len(truth)), "n_diseased": m,
           "n_clusters": n_clusters,
           "ci": [list(auc_ci(float(aucs[j]), float(cov[j, j]), level)) for j in range(k)]}
    if k == 2:
        diff = float(aucs[0] - aucs[1])
        var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
        se = np.sqrt(max(var, 0.0))
        zq = stats.norm.ppf(0.5 + level / 2)
        zz = diff / se if se > 0 else 0.0
        out["paired"] = {"auc_diff": diff, "se": float(se), "z": float(zz), "p": float(2 * stats.norm.sf(abs(zz))),
                         "ci": [diff - zq * float(se), diff + zq * float(se)]}
    return out
