"""Multi-reader multi-case analysis: Obuchowski-Rockette (Hillis 2007, 2008) with DeLong or jackknife
covariance, and Dorfman-Berbaum-Metz on jackknife pseudovalues. Two or more modalities, fully crossed."""

from __future__ import annotations

import numpy as np
from scipy import stats

from .roc import auc, delong


def auc_matrix(ratings: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """ratings (t, r, c) -> empirical AUCs (t, r)."""
    t, r, _ = ratings.shape
    return np.array([[auc(ratings[i, j], truth) for j in range(r)] for i in range(t)])


def jackknife_aucs(ratings: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(c, t, r) AUCs with each case left out in turn."""
    t, r, c = ratings.shape
    out = np.empty((c, t, r))
    keep = np.ones(c, bool)
    for k in range(c):
        keep[k] = False
        out[k] = auc_matrix(ratings[:, :, keep], truth[keep])
        keep[k] = True
    return out


def _cov_terms(cov: np.ndarray, t: int, r: int) -> tuple[float, float, float, float]:
    """Average Var, Cov1 (same reader, other modality), Cov2 (same modality, other reader), Cov3."""
    var, c1, c2, c3 = [], [], [], []
    for i in range(t):
        for j in range(r):
            for i2 in range(t):
                for j2 in range(r):
                    v = cov[i * r + j, i2 * r + j2]
                    if i == i2 and j == j2:
                        var.append(v)
                    elif j == j2:
                        c1.append(v)
                    elif i == i2:
                        c2.append(v)
                    else:
                        c3.append(v)
    return float(np.mean(var)), float(np.mean(c1)), float(np.mean(c2)), float(np.mean(c3))


def or_covariance(ratings: np.ndarray, truth: np.ndarray, method: str) -> np.ndarray:
    t, r, c = ratings.shape
    if method == "delong":
        flat = [ratings[i, j] for i in range(t) for j in range(r)]
        return delong(flat, truth).cov
    jk = jackknife_aucs(ratings, truth).reshape(c, t * r)
    dev = jk - jk.mean(0)
    return (c - 1) / c * dev.T @ dev


def _f_test(ms_num: float, den: float, df1: int, ddf: float):
    """F statistic and p; None when undefined (zero denominator). An infinite ddf (MS(T*R) = 0,
    readers agree exactly on the modality difference) is the chi-square limit."""
    if not den > 0:
        return None, None
    f = ms_num / den
    if not np.isfinite(ddf):
        return float(f), float(stats.chi2.sf(f * df1, df1))
    return float(f), float(stats.f.sf(f, df1, ddf))


def _hillis_ddf(den: float, ms_tr: float, df_tr: int) -> float:
    return float(den ** 2 / (ms_tr ** 2 / df_tr)) if ms_tr > 0 else float("inf")


def obuchowski_rockette(ratings: np.ndarray, truth: np.ndarray, method: str = "jackknife",
                        level: float = 0.95) -> dict:
    """OR analysis of (t, r, c) ratings; `diff`/`ci` are modality 0 minus modality 1."""
    t, r, _ = ratings.shape
    theta = auc_matrix(ratings, truth)
    var, cov1, cov2, cov3 = _cov_terms(or_covariance(ratings, truth, method), t, r)
    mt = theta.mean(1)
    grand = theta.mean()
    ms_t = r * ((mt - grand) ** 2).sum() / (t - 1)
    inter = theta - mt[:, None] - theta.mean(0)[None, :] + grand
    ms_tr = (inter ** 2).sum() / ((t - 1) * (r - 1))
    diff = float(mt[0] - mt[1])
    q = 0.5 + level / 2
    # random readers, random cases (Hillis 2007 denominator and ddf)
    den = ms_tr + r * max(cov2 - cov3, 0.0)
    ddf = _hillis_ddf(den, ms_tr, (t - 1) * (r - 1))
    f, p = _f_test(ms_t, den, t - 1, ddf)
    se = np.sqrt(2.0 / r * den)
    tq = stats.t.ppf(q, ddf) if np.isfinite(ddf) else stats.norm.ppf(q)
    rrrc = {"f": f, "df1": t - 1, "df2": ddf if np.isfinite(ddf) else None, "p": p, "diff": diff,
            "ci": [float(diff - tq * se), float(diff + tq * se)]}
    # fixed readers, random cases
    den_fr = var - cov1 + (r - 1) * max(cov2 - cov3, 0.0)
    if den_fr > 0:
        chi2 = (t - 1) * ms_t / den_fr
        se_fr = np.sqrt(2.0 / r * den_fr)
        zq = stats.norm.ppf(q)
        frrc = {"chi2": float(chi2), "df": t - 1, "p": float(stats.chi2.sf(chi2, t - 1)), "diff": diff,
                "ci": [float(diff - zq * se_fr), float(diff + zq * se_fr)]}
    else:
        frrc = {"chi2": None, "df": t - 1, "p": None, "diff": diff, "ci": [None, None]}
    # random readers, fixed cases
    f_rf, p_rf = _f_test(ms_t, ms_tr, t - 1, (t - 1) * (r - 1))
    rrfc = {"f": f_rf, "df1": t - 1, "df2": (t - 1) * (r - 1), "p": p_rf, "diff": diff}
    return {"aucs": theta.tolist(), "mean_auc": mt.tolist(), "var": var, "cov1": cov1, "cov2": cov2, "cov3": cov3,
            "ms_t": float(ms_t), "ms_tr": float(ms_tr), "rrrc": rrrc, "frrc": frrc, "rrfc": rrfc}


def dbm(ratings: np.ndarray, truth: np.ndarray) -> dict:
    """Dorfman-Berbaum-Metz RRRC on jackknife pseudovalues, Hillis ddf."""
    t, r, c = ratings.shape
    theta = auc_matrix(ratings, truth)
    jk = jackknife_aucs(ratings, truth)  # (c, t, r)
    y = c * theta[None] - (c - 1) * jk  # pseudovalues (c, t, r)
    y = np.transpose(y, (1, 2, 0))  # (t, r, c)
    g = y.mean()
    yt, yr, yc = y.mean((1, 2)), y.mean((0, 2)), y.mean((0, 1))
    ytr, ytc, yrc = y.mean(2), y.mean(1), y.mean(0)
    ms_t = r * c * ((yt - g) ** 2).sum() / (t - 1)
    ms_tr = c * ((ytr - yt[:, None] - yr[None, :] + g) ** 2).sum() / ((t - 1) * (r - 1))
    ms_tc = r * ((ytc - yt[:, None] - yc[None, :] + g) ** 2).sum() / ((t - 1) * (c - 1))
    resid = y - ytr[:, :, None] - ytc[:, None, :] - yrc[None, :, :] + yt[:, None, None] + yr[None, :, None] \
        + yc[None, None, :] - g
    ms_trc = (resid ** 2).sum() / ((t - 1) * (r - 1) * (c - 1))
    den = ms_tr + max(ms_tc - ms_trc, 0.0)
    ddf = _hillis_ddf(den, ms_tr, (t - 1) * (r - 1))
    f, p = _f_test(ms_t, den, t - 1, ddf)
    return {"rrrc": {"f": f, "df1": t - 1, "df2": ddf if np.isfinite(ddf) else None, "p": p}}


def describe_rrrc(r: dict, difference: str) -> str:
    """One line for people: difference, CI, F test (undefined parts shown as such)."""
    def num(x, fmt):
        return "undefined" if x is None else format(x, fmt)

    df2 = "inf" if r.get("df2") is None else format(r["df2"], ".2f")
    return (f"{difference} = {r['diff']:.4f} (95% CI {num(r['ci'][0], '.4f')} to {num(r['ci'][1], '.4f')}); "
            f"F({r['df1']}, {df2}) = {num(r['f'], '.3f')}, p = {num(r['p'], '.4f')}")
