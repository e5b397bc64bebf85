"""Sample size for an MRMC ROC study from a pilot's Obuchowski-Rockette variance components
(Hillis, Obuchowski and Berbaum 2011, Acad Radiol 18:129-142; random readers and cases, two
modalities).

From the pilot (c0 cases): error variance s2 and covariances cov1-cov3 (DeLong or jackknife) and
MS(T*R) give the test-by-reader variance s2_TR = MS(T*R) - s2 + cov1 + max(cov2 - cov3, 0)
(truncated at 0). For a new study with J readers and c cases the case-dependent terms scale by
c0/c; with effect size d (difference in mean AUC):
  D   = s2_TR + s2' - cov1' + (J - 1) max(cov2' - cov3', 0)
  lambda = J d^2 / (2 D),   ddf = D^2 / ((s2_TR + s2' - cov1' - max(cov2' - cov3', 0))^2 / (J - 1))
  power = P(F(1, ddf; lambda) > F_{1-alpha}(1, ddf)).
"""

from __future__ import annotations

from scipy import stats


def components(or_result: dict, n_cases: int) -> dict:
    """Variance components from an `obuchowski_rockette` result of the pilot."""
    s2, c1, c2, c3 = (float(or_result[k]) for k in ("var", "cov1", "cov2", "cov3"))
    s2_tr = max(float(or_result["ms_tr"]) - s2 + c1 + max(c2 - c3, 0.0), 0.0)
    return {"var_tr": s2_tr, "var": s2, "cov1": c1, "cov2": c2, "cov3": c3, "n_cases": int(n_cases)}


def power(comp: dict, readers: int, cases: int, effect: float, alpha: float = 0.05) -> dict:
    if readers < 2 or cases < 2:
        raise ValueError("power needs at least 2 readers and 2 cases")
    scale = comp["n_cases"] / cases
    s2, c1 = comp["var"] * scale, comp["cov1"] * scale
    c23 = max(comp["cov2"] - comp["cov3"], 0.0) * scale
    d = comp["var_tr"] + s2 - c1 + (readers - 1) * c23
    ms_tr = comp["var_tr"] + s2 - c1 - c23
    lam = readers * effect ** 2 / (2 * d)
    ddf = d ** 2 / (ms_tr ** 2 / (readers - 1)) if ms_tr > 0 else float("inf")
    ddf = min(ddf, 1e7)
    crit = stats.f.ppf(1 - alpha, 1, ddf)
    # scipy's ncf with zero noncentrality returns nonsense (-0.95 seen); that case is the central F.
    pw = float(stats.ncf.sf(crit, 1, ddf, lam)) if lam > 0 else float(stats.f.sf(crit, 1, ddf))
    return {"readers": readers, "cases": cases, "effect": effect, "alpha": alpha, "power": pw,
            "noncentrality": float(lam), "ddf": float(ddf)}


def table(comp: dict, readers: list[int], cases: list[int], effect: float, alpha: float = 0.05) -> list[dict]:
    return [power(comp, r, c, effect, alpha) for r in readers for c in cases]


def cases_needed(comp: dict, readers: int, effect: float, target: float = 0.8, alpha: float = 0.05,
                 max_cases: int = 100000):
    """The smallest number of cases reaching `target` power with `readers` readers, or None."""
    lo, hi = 2, 2
    while power(comp, readers, hi, effect, alpha)["power"] < target:
        if hi >= max_cases:
            return None
        lo, hi = hi, min(hi * 2, max_cases)
    while lo < hi:
        mid = (lo + hi) // 2
        if power(comp, readers, mid, effect, alpha)["power"] >= target:
            hi = mid
        else:
            lo = mid + 1
    return hi
