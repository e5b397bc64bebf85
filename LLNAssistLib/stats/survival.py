"""Kaplan-Meier, the log-rank test and Cox regression with the conventions of R's survival
package (survfit, survdiff, coxph), so a statistician's numbers and these agree:
- Kaplan-Meier: Greenwood variance, confidence interval on the log scale (conf.type = "log");
  S(t) includes the events at exactly t; the median is the first time S <= 0.5, or the midpoint of
  the interval where S stays exactly 0.5 (survfit's rule); null when not reached.
- log-rank: chi-square from the full hypergeometric covariance matrix of observed - expected.
- Cox: Efron's method for tied event times, Newton-Raphson to a relative change of the log
  partial likelihood below 1e-10, Wald CIs and p-values; Harrell's concordance as coxph reports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass
class KM:
    times: np.ndarray  # distinct event times
    n_risk: np.ndarray
    n_event: np.ndarray
    surv: np.ndarray
    se_log: np.ndarray  # Greenwood standard error of log S

    def at(self, t: float, level: float = 0.95) -> dict:
        """S(t) (events at t included) with its log-scale confidence interval."""
        i = int(np.searchsorted(self.times, t, side="right")) - 1
        if i < 0:
            return {"survival": 1.0, "lower": 1.0, "upper": 1.0}
        s, se = float(self.surv[i]), float(self.se_log[i])
        if s <= 0:
            return {"survival": 0.0, "lower": None, "upper": None}
        z = stats.norm.ppf(0.5 + level / 2)
        return {"survival": s, "lower": s * math.exp(-z * se), "upper": min(1.0, s * math.exp(z * se))}

    def median(self):
        return _quantile_time(self.times, self.surv, 0.5)


def _quantile_time(times, surv, p: float):
    below = np.flatnonzero(surv <= p + 1e-12)
    if below.size == 0:
        return None
    i = int(below[0])
    if abs(surv[i] - p) < 1e-12:  # S stays exactly at p until the next event time: midpoint
        return float((times[i] + times[i + 1]) / 2) if i + 1 < len(times) else float(times[i])
    return float(times[i])


def kaplan_meier(time, event) -> KM:
    time = np.asarray(time, float)
    event = np.asarray(event).astype(bool)
    ts = np.unique(time[event])
    n_risk = np.array([(time >= t).sum() for t in ts], float)
    n_event = np.array([((time == t) & event).sum() for t in ts], float)
    surv = np.cumprod(1 - n_event / n_risk)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(n_risk > n_event, n_event / (n_risk * (n_risk - n_event)), np.inf)
    se_log = np.sqrt(np.cumsum(terms))
    return KM(ts, n_risk, n_event, surv, se_log)


def logrank(time, event, group) -> dict:
    """k-sample log-rank test (survdiff, rho = 0)."""
    time = np.asarray(time, float)
    event = np.asarray(event).astype(bool)
    group = np.asarray(group)
    levels = sorted(set(group.tolist()), key=str)
    k = len(levels)
    obs, exp = np.zeros(k), np.zeros(k)
    var = np.zeros((k, k))
    for t in np.unique(time[event]):
        at_risk = time >= t
        n = at_risk.sum()
        d = ((time == t) & event).sum()
        nk = np.array([(at_risk & (group == g)).sum() for g in levels], float)
        dk = np.array([((time == t) & event & (group == g)).sum() for g in levels], float)
        obs += dk
        exp += d * nk / n
        if n > 1:
            f = d * (n - d) / (n * n * (n - 1))
            var += f * (np.diag(nk * n) - np.outer(nk, nk))
    u = (obs - exp)[:-1]
    v = var[:-1, :-1]
    chi2 = float(u @ np.linalg.solve(v, u)) if k > 1 else 0.0
    df = k - 1
    names = [str(v) for v in levels]
    return {"chi2": chi2, "df": df, "p": float(stats.chi2.sf(chi2, df)) if df else None,
            "observed": dict(zip(names, obs.tolist())), "expected": dict(zip(names, exp.tolist()))}


# --- Cox regression, Efron ties -----------------------------------------------------------------------------
def _efron(beta, X, time, event, order_desc):
    """Log partial likelihood, gradient and information (Efron)."""
    eta = X @ beta
    eta -= eta.max()  # constant shift: the partial likelihood is invariant, exp() stays finite
    r = np.exp(eta)
    p = X.shape[1]
    ll, grad, info = 0.0, np.zeros(p), np.zeros((p, p))
    # risk-set sums, accumulated from the longest time down
    s0, s1, s2 = 0.0, np.zeros(p), np.zeros((p, p))
    i = 0
    n = len(time)
    idx = order_desc
    while i < n:
        t = time[idx[i]]
        j = i
        while j < n and time[idx[j]] == t:
            j += 1
        block = idx[i:j]
        for q in block:
            s0 += r[q]
            s1 += r[q] * X[q]
            s2 += r[q] * np.outer(X[q], X[q])
        dead = block[event[block]]
        d = len(dead)
        if d:
            d0 = r[dead].sum()
            d1 = (r[dead][:, None] * X[dead]).sum(0)
            d2 = np.einsum("i,ij,ik->jk", r[dead], X[dead], X[dead])
            ll += eta[dead].sum()
            grad += X[dead].sum(0)
            for m in range(d):
                f = m / d
                a0 = s0 - f * d0
                a1 = s1 - f * d1
                a2 = s2 - f * d2
                ll -= math.log(a0)
                mean = a1 / a0
                grad -= mean
                info += a2 / a0 - np.outer(mean, mean)
        i = j
    return ll, grad, info


@dataclass
class CoxFit:
    terms: list
    coef: np.ndarray
    se: np.ndarray
    var: np.ndarray  # covariance of the coefficients (inverse information)
    loglik: float
    loglik_null: float
    concordance: float
    n: int
    n_events: int
    iterations: int

    def table(self, level: float = 0.95) -> dict:
        z = stats.norm.ppf(0.5 + level / 2)
        out = {}
        for name, b, s in zip(self.terms, self.coef, self.se):
            out[name] = {"coef": float(b), "se": float(s), "hr": math.exp(b), "lower": math.exp(b - z * s),
                         "upper": math.exp(b + z * s), "p": float(2 * stats.norm.sf(abs(b / s)))}
        return out


def cox(X, time, event, terms=None, max_iter: int = 50, tol: float = 1e-10) -> CoxFit:
    X = np.asarray(X, float)
    if X.ndim == 1:
        X = X[:, None]
    time = np.asarray(time, float)
    event = np.asarray(event).astype(bool)
    n, p = X.shape
    order_desc = np.argsort(-time, kind="stable")
    beta = np.zeros(p)
    ll0, grad, info = _efron(beta, X, time, event, order_desc)
    ll = ll0
    it = 0
    while it < max_iter:
        it += 1
        step = np.linalg.solve(info, grad)
        new = beta + step
        ll_new, g_new, i_new = _efron(new, X, time, event, order_desc)
        halvings = 0
        while ll_new < ll - 1e-12 and halvings < 30:  # step halving, as coxph does
            step /= 2
            new = beta + step
            ll_new, g_new, i_new = _efron(new, X, time, event, order_desc)
            halvings += 1
        done = abs(ll_new - ll) <= tol * max(abs(ll), 1.0)
        beta, ll, grad, info = new, ll_new, g_new, i_new
        if done:
            break
    var = np.linalg.inv(info)
    se = np.sqrt(np.diag(var))
    return CoxFit(list(terms or [f"x{i}" for i in range(p)]), beta, se, var, ll, ll0,
                  concordance(X @ beta, time, event), n, int(event.sum()), it)


def concordance(risk, time, event) -> float:
    """Harrell's C as survival::concordance counts it for a Cox model: comparable pairs have the
    earlier time an event (a censoring at the same time still counts as at risk); ties in risk
    count one half; pairs of events at the same time are not comparable."""
    risk = np.asarray(risk, float)
    time = np.asarray(time, float)
    event = np.asarray(event).astype(bool)
    conc = disc = tied = 0.0
    for i in np.flatnonzero(event):
        comparable = (time > time[i]) | ((time == time[i]) & ~event)
        r = risk[comparable]
        conc += (r < risk[i]).sum()
        disc += (r > risk[i]).sum()
        tied += (r == risk[i]).sum()
    total = conc + disc + tied
    return float((conc + tied / 2) / total) if total else float("nan")


def ph_test(X, time, event, fit: CoxFit) -> dict:
    """Proportional-hazards check per term: Grambsch and Therneau's (1994) test of a time trend in
    the scaled Schoenfeld residuals, time transformed by 1 - Kaplan-Meier (as cox.zph's "km"),
    a 1-df chi-square per term (the approximation of survival < 3.0; R 4's cox.zph uses the exact
    score test, so small differences are expected)."""
    X = np.asarray(X, float)
    if X.ndim == 1:
        X = X[:, None]
    time = np.asarray(time, float)
    event = np.asarray(event).astype(bool)
    r = np.exp(X @ fit.coef)
    ev = np.flatnonzero(event)
    resid = []
    for i in ev:
        at = time >= time[i]
        w = r[at]
        resid.append(X[i] - (w[:, None] * X[at]).sum(0) / w.sum())
    resid = np.array(resid)
    km = kaplan_meier(time, event)
    g = np.array([1 - km.at(time[i])["survival"] for i in ev])
    g = g - g.mean()
    d = len(ev)
    scaled = resid @ fit.var  # (V r_k) per event
    out = {}
    for j, name in enumerate(fit.terms):
        denom = fit.var[j, j] * float(g @ g)
        chi2 = d * float(g @ scaled[:, j]) ** 2 / denom if denom > 0 else 0.0
        out[name] = {"chi2": chi2, "df": 1, "p": float(stats.chi2.sf(chi2, 1))}
    return out
