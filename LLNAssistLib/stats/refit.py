"""Refitting the radiomics score at a site, as Yoo et al. (Sci Rep 2025) fitted theirs: optional
ComBat harmonisation across centres, then LASSO logistic regression with nested cross-validation
(outer folds for an honest AUC, inner folds to choose lambda), seeded.

- ComBat: Johnson, Li and Rabinovic (2007), parametric empirical Bayes location and scale
  adjustment per centre (as neuroCombat with no covariates).
- LASSO: glmnet's objective for the binomial family, -loglik/n + lambda * sum|beta_j| on
  standardised features (population SD), solved by coordinate descent inside Newton (IRLS) steps,
  coefficients returned on the original scale; lambda grid and inner-fold choice by mean binomial
  deviance as cv.glmnet does.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from . import roc


# --- ComBat ----------------------------------------------------------------------------------------------------
def combat(X: np.ndarray, batch: Sequence, max_iter: int = 1000, tol: float = 1e-4) -> np.ndarray:
    """Features (n x p) adjusted for centre (`batch`) effects in mean and variance."""
    X = np.asarray(X, float)
    batch = np.asarray([str(b) for b in batch])
    levels = sorted(set(batch))
    n, p = X.shape
    design = np.column_stack([(batch == b).astype(float) for b in levels])
    n_b = design.sum(0)
    beta = np.linalg.lstsq(design, X, rcond=None)[0]  # (k, p) per-centre means
    grand = (n_b / n) @ beta
    var_pooled = ((X - design @ beta) ** 2).mean(0)
    var_pooled[var_pooled == 0] = 1.0
    Z = (X - grand) / np.sqrt(var_pooled)
    gamma_hat = np.array([Z[batch == b].mean(0) for b in levels])
    delta_hat = np.array([Z[batch == b].var(0, ddof=1) for b in levels])
    gamma_bar = gamma_hat.mean(1)
    t2 = gamma_hat.var(1, ddof=1)
    m, s2 = delta_hat.mean(1), delta_hat.var(1, ddof=1)
    a_prior = (2 * s2 + m ** 2) / s2
    b_prior = (m * s2 + m ** 3) / s2
    gamma_star = np.zeros_like(gamma_hat)
    delta_star = np.ones_like(delta_hat)
    for i, b in enumerate(levels):
        zb = Z[batch == b]
        g_old, d_old = gamma_hat[i].copy(), delta_hat[i].copy()
        for _ in range(max_iter):
            g_new = (n_b[i] * t2[i] * gamma_hat[i] + d_old * gamma_bar[i]) / (n_b[i] * t2[i] + d_old)
            ss = ((zb - g_new) ** 2).sum(0)
            d_new = (b_prior[i] + 0.5 * ss) / (n_b[i] / 2 + a_prior[i] - 1)
            change = max(np.max(np.abs(g_new - g_old) / np.abs(g_old).clip(1e-12)),
                         np.max(np.abs(d_new - d_old) / np.abs(d_old).clip(1e-12)))
            g_old, d_old = g_new, d_new
            if change < tol:
                break
        gamma_star[i], delta_star[i] = g_old, d_old
    out = np.empty_like(Z)
    for i, b in enumerate(levels):
        sel = batch == b
        out[sel] = (Z[sel] - gamma_star[i]) / np.sqrt(delta_star[i])
    return out * np.sqrt(var_pooled) + grand


# --- LASSO logistic regression ---------------------------------------------------------------------------------
def _standardise(X):
    mu = X.mean(0)
    sd = X.std(0)
    sd[sd == 0] = 1.0
    return (X - mu) / sd, mu, sd


def lasso_logistic(X: np.ndarray, y: np.ndarray, lam: float, tol: float = 1e-12, max_iter: int = 10000,
                   start: Optional[np.ndarray] = None) -> tuple[float, np.ndarray]:
    """(intercept, coefficients) on the original scale minimising glmnet's binomial objective."""
    X = np.asarray(X, float)
    y = np.asarray(y, float)
    Xs, mu, sd = _standardise(X)
    n, p = Xs.shape
    b0, b = (0.0, np.zeros(p)) if start is None else (start[0], start[1].copy())
    if start is None:
        ybar = y.mean()
        b0 = math.log(ybar / (1 - ybar))
    for _outer in range(200):
        eta = b0 + Xs @ b
        prob = 1 / (1 + np.exp(-eta))
        w = np.clip(prob * (1 - prob), 1e-10, None)
        z = eta + (y - prob) / w  # working response
        b_prev0, b_prev = b0, b.copy()
        r = z - b0 - Xs @ b  # working residual
        xw = (w[:, None] * Xs * Xs).sum(0) / n
        for _inner in range(max_iter):
            biggest = 0.0
            d0 = (w * r).sum() / w.sum()
            b0 += d0
            r -= d0
            biggest = max(biggest, abs(d0))
            for j in range(p):
                old = b[j]
                rho = (w * Xs[:, j] * r).sum() / n + xw[j] * old
                new = math.copysign(max(abs(rho) - lam, 0.0), rho) / xw[j]
                if new != old:
                    r -= Xs[:, j] * (new - old)
                    b[j] = new
                    biggest = max(biggest, abs(new - old))
            if biggest < tol:
                break
        if max(abs(b0 - b_prev0), np.max(np.abs(b - b_prev), initial=0.0)) < tol:
            break
    coef = b / sd
    return float(b0 - (coef * mu).sum()), coef


def lambda_grid(X, y, n_lambda: int = 100) -> np.ndarray:
    Xs, _mu, _sd = _standardise(np.asarray(X, float))
    y = np.asarray(y, float)
    n, p = Xs.shape
    lam_max = np.max(np.abs(Xs.T @ (y - y.mean()))) / n
    ratio = 1e-4 if n > p else 1e-2
    return np.exp(np.linspace(math.log(lam_max), math.log(lam_max * ratio), n_lambda))


def _deviance(y, prob):
    prob = np.clip(prob, 1e-15, 1 - 1e-15)
    return float(-2 * np.mean(y * np.log(prob) + (1 - y) * np.log(1 - prob)))


def _predict(b0, coef, X):
    return 1 / (1 + np.exp(-(b0 + np.asarray(X, float) @ coef)))


def stratified_folds(y, k: int, rng: np.random.Generator) -> np.ndarray:
    y = np.asarray(y).astype(int)
    fold = np.empty(len(y), int)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        fold[idx] = np.arange(len(idx)) % k
    return fold


def choose_lambda(X, y, k: int, rng: np.random.Generator, grid: Optional[np.ndarray] = None) -> float:
    """The lambda of lowest mean held-out binomial deviance over k stratified folds."""
    grid = lambda_grid(X, y) if grid is None else grid
    fold = stratified_folds(y, k, rng)
    dev = np.zeros(len(grid))
    for f in range(k):
        tr, te = fold != f, fold == f
        start = None
        for i, lam in enumerate(grid):  # warm starts along the path
            b0, coef = lasso_logistic(X[tr], y[tr], lam, tol=1e-8,
                                      start=None if start is None else start)
            _xs, mu, sd = _standardise(X[tr])
            start = (b0 + (coef * mu).sum(), coef * sd)
            dev[i] += _deviance(y[te], _predict(b0, coef, X[te])) * te.sum()
    return float(grid[int(np.argmin(dev))])


def nested_cv(X, y, outer: int = 5, inner: int = 5, seed: int = 0) -> dict:
    """Out-of-fold probabilities from models whose lambda was chosen inside each outer training
    set, their AUC (DeLong CI), and the final model fitted on everything."""
    X = np.asarray(X, float)
    y = np.asarray(y).astype(int)
    rng = np.random.default_rng(seed)
    fold = stratified_folds(y, outer, rng)
    oof = np.zeros(len(y))
    chosen = []
    for f in range(outer):
        tr, te = fold != f, fold == f
        lam = choose_lambda(X[tr], y[tr], inner, rng)
        b0, coef = lasso_logistic(X[tr], y[tr], lam)
        oof[te] = _predict(b0, coef, X[te])
        chosen.append(lam)
    d = roc.delong([oof], y)
    lo, hi = roc.auc_ci(float(d.aucs[0]), float(d.cov[0, 0]))
    lam = choose_lambda(X, y, inner, rng)
    b0, coef = lasso_logistic(X, y, lam)
    return {"outer_auc": {"estimate": float(d.aucs[0]), "lower": lo, "upper": hi},
            "outer_lambdas": chosen, "lambda": lam, "intercept": b0, "coefficients": coef,
            "out_of_fold_probability": oof}
