"""`llnassist cohort ...`: the statistics of the source papers on a site's own cohort, from the CSV
files users already have (the batch's cohort.csv joined with clinical data on a key column).
Every function takes rows and column names and returns the JSON-ready result; bad data is refused
with the column and row named."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .csvtable import read_table
from .errors import InputError
from .stats import cohort as S
from .stats import survival as SV


def load(path: str, required: Sequence[str], join: Optional[str] = None, key: str = "case_id") -> list:
    """Rows of DATA.csv (with `join` merged in on `key`); refuses missing columns and unmatched keys."""
    rows = read_table(path, tuple(c for c in required if c) if not join else (key,), "data")
    if join:
        other = read_table(join, (key,), "join")
        by_key = {}
        for n, r in enumerate(other, start=2):
            if r[key] in by_key:
                raise InputError(f"{join} row {n}: {key} {r[key]!r} appears twice; keys must be unique")
            by_key[r[key]] = r
        merged = []
        for n, r in enumerate(rows, start=2):
            if r[key] not in by_key:
                raise InputError(f"{path} row {n}: {key} {r[key]!r} is not in {join}; check the key column")
            merged.append({**by_key[r[key]], **r})
        rows = merged
    missing = [c for c in required if c and c not in rows[0]]
    if missing:
        raise InputError(f"{path} lacks column(s) {', '.join(missing)}; available: {', '.join(rows[0])}")
    return rows


def numbers(rows: list, col: str, path: str, what: str = "a number") -> np.ndarray:
    out = []
    for n, r in enumerate(rows, start=2):
        try:
            v = float(r[col])
        except ValueError:
            raise InputError(f"{path} row {n}: {col} is {r[col]!r}, not {what}; fix or remove the row") from None
        if not math.isfinite(v):
            raise InputError(f"{path} row {n}: {col} is {r[col]!r}, not {what}")
        out.append(v)
    return np.array(out)


_YES, _NO = {"1", "yes", "true", "positive"}, {"0", "no", "false", "negative"}


def binary(rows: list, col: str, path: str) -> np.ndarray:
    out = []
    for n, r in enumerate(rows, start=2):
        v = r[col].strip().lower()
        if v in _YES:
            out.append(1)
        elif v in _NO:
            out.append(0)
        else:
            raise InputError(f"{path} row {n}: {col} is {r[col]!r}; it must be 0/1 (or yes/no, positive/negative)")
    return np.array(out)


def design(rows: list, cols: Sequence[str], path: str) -> tuple[np.ndarray, list]:
    """Numeric columns as they are; others treatment-coded against the first level in sorted
    order, terms named COL[LEVEL] (as R names them)."""
    blocks, names = [], []
    for c in cols:
        vals = [r[c] for r in rows]
        try:
            blocks.append(np.array([float(v) for v in vals])[:, None])
            names.append(c)
        except ValueError:
            levels = sorted(set(vals))
            if len(levels) < 2:
                raise InputError(f"{path}: {c} has a single value ({levels[0]!r}); it cannot enter a model") from None
            for lev in levels[1:]:
                blocks.append(np.array([v == lev for v in vals], float)[:, None])
                names.append(f"{c}[{lev}]")
    return np.hstack(blocks), names


def survival(path: str, time: str, event: str, group: Optional[str] = None, covariates: Sequence[str] = (),
             at: Sequence[float] = (), join: Optional[str] = None, key: str = "case_id") -> dict:
    rows = load(path, [time, event, group or "", *covariates], join, key)
    t = numbers(rows, time, path, "a time")
    if (t < 0).any():
        n = int(np.flatnonzero(t < 0)[0]) + 2
        raise InputError(f"{path} row {n}: {time} is negative; times must be >= 0")
    e = binary(rows, event, path)
    out = {"n": len(rows), "n_events": int(e.sum()), "km": {}}
    groups = [r[group] for r in rows] if group else ["all"] * len(rows)
    for g in sorted(set(groups)):
        sel = np.array([x == g for x in groups])
        km = SV.kaplan_meier(t[sel], e[sel])
        ticks = np.linspace(0, float(t.max()), 6)
        out["km"][g] = {"n": int(sel.sum()), "events": int(e[sel].sum()), "median": km.median(),
                        "at": {_label(x): km.at(x) for x in at},
                        "curve": {"time": [0.0, *km.times.tolist()], "survival": [1.0, *km.surv.tolist()]},
                        "at_risk": {_label(x): int((t[sel] >= x).sum()) for x in ticks}}
    if group:
        lr = SV.logrank(t, e, groups)
        out["logrank"] = {"chi2": lr["chi2"], "df": lr["df"], "p": lr["p"]}
    terms = ([group] if group else []) + list(covariates)
    if terms:
        uni = {}
        for c in terms:
            X, names = design(rows, [c], path)
            uni.update(SV.cox(X, t, e, names).table())
        X, names = design(rows, terms, path)
        fit = SV.cox(X, t, e, names)
        out["cox"] = {"univariable": _hr(uni), "multivariable": _hr(fit.table()), "concordance": fit.concordance,
                      "proportional_hazards": SV.ph_test(X, t, e, fit)}
    return out


def _label(x: float) -> str:
    return f"{x:g}"


def _hr(table: dict) -> dict:
    return {k: {"hr": v["hr"], "lower": v["lower"], "upper": v["upper"], "p": v["p"], "coef": v["coef"],
                "se": v["se"]} for k, v in table.items()}


def _is_binary(rows: list, col: str) -> bool:
    return {r[col].strip().lower() for r in rows} <= _YES | _NO


def diagnostic(path: str, truth: str, pred: Sequence[str], by: Optional[str] = None, join: Optional[str] = None,
               key: str = "case_id") -> dict:
    """Binary calls: the 2 x 2 measures. Categorical columns (the compartment of the positive node,
    the short-axis category): confusion matrix, accuracy and kappa."""
    rows = load(path, [truth, *pred, by or ""], join, key)
    binary_data = _is_binary(rows, truth) and all(_is_binary(rows, p) for p in pred)
    t = binary(rows, truth, path) if binary_data else np.array([r[truth] for r in rows])
    out = {"truth": truth, "predictions": {}}

    def one(tt, qq):
        if binary_data:
            res = S.diagnostic(tt, qq)
            res["confusion"] = S.confusion(tt, qq, ["0", "1"])
            return res
        agree = int(sum(a == b for a, b in zip(tt, qq)))
        labels = sorted(set(map(str, tt)) | set(map(str, qq)))
        from .stats import kappa as K

        k = K.kappa([str(v) for v in tt], [str(v) for v in qq], "unweighted", categories=labels)
        return {"n": len(tt), "accuracy": S._est(agree, len(tt)), "confusion": S.confusion(tt, qq, labels),
                "kappa": {"estimate": k["kappa"], "lower": k["ci"][0], "upper": k["ci"][1], "se": k["ase"],
                          "label": S.landis_koch(k["kappa"])}}

    for p in pred:
        q = binary(rows, p, path) if binary_data else np.array([r[p] for r in rows])
        res = one(t, q)
        if by:
            res["by"] = {}
            for level in sorted({r[by] for r in rows}):
                sel = np.array([r[by] == level for r in rows])
                res["by"][level] = one(t[sel], q[sel])
        out["predictions"][p] = res
    if len(pred) > 1:
        out["kappa_matrix"] = S.kappa_matrix({c: [r[c] for r in rows] for c in [truth, *pred]})
    if len(pred) == 1:
        out.update(out["predictions"][pred[0]])
    return out


def model(path: str, truth: str, prob: str, cutoff: Optional[float] = None, join: Optional[str] = None,
          key: str = "case_id") -> dict:
    rows = load(path, [truth, prob], join, key)
    t = binary(rows, truth, path)
    p = numbers(rows, prob, path, "a probability")
    bad = np.flatnonzero((p < 0) | (p > 1))
    if bad.size:
        raise InputError(f"{path} row {int(bad[0]) + 2}: {prob} is {p[bad[0]]:g}, not a probability between 0 and 1")
    if t.min() == t.max():
        raise InputError(f"{path}: {truth} has only {'positive' if t[0] else 'negative'} cases; an AUC needs both")
    return S.model_performance(t, p, cutoff)


def table(path: str, by: str, variables: Sequence[str], nonnormal: Sequence[str] = (),
          join: Optional[str] = None, key: str = "case_id") -> dict:
    rows = load(path, [by, *variables], join, key)
    return S.baseline_table(rows, by, variables, nonnormal)


def refit(path: str, truth: str, features: Sequence[str], center: Optional[str] = None, outer: int = 5,
          inner: int = 5, seed: int = 0, join: Optional[str] = None, key: str = "case_id") -> dict:
    from .stats import refit as R

    rows = load(path, [truth, *features, center or ""], join, key)
    y = binary(rows, truth, path)
    X = np.column_stack([numbers(rows, f, path) for f in features])
    if center:
        X = R.combat(X, [r[center] for r in rows])
    res = R.nested_cv(X, y, outer, inner, seed)
    coefs = {f: float(c) for f, c in zip(features, res["coefficients"])}
    return {"n": len(rows), "n_positive": int(y.sum()), "harmonised_by": center, "seed": seed,
            "outer_folds": outer, "inner_folds": inner, "outer_auc": res["outer_auc"], "lambda": res["lambda"],
            "outer_lambdas": res["outer_lambdas"],
            "score": {"intercept": res["intercept"], "coefficients": {k: v for k, v in coefs.items() if v != 0.0},
                      "cutoff": 0.0, "note": "probability = 1 / (1 + exp(-score)); positive when score >= cutoff"}}
