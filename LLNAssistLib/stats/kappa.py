"""Cohen's kappa, unweighted and weighted (linear = Cicchetti-Allison, quadratic), with the
asymptotic standard error of Fleiss, Cohen and Everitt (1969) as SAS PROC FREQ reports it.
Categories are fixed by the caller (the reader scale is 1-5), because weights depend on them."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats

READER_CATEGORIES = (1, 2, 3, 4, 5)


def table(a: Sequence, b: Sequence, categories: Sequence) -> np.ndarray:
    idx = {c: i for i, c in enumerate(categories)}
    t = np.zeros((len(categories), len(categories)))
    for x, y in zip(a, b):
        t[idx[x], idx[y]] += 1
    return t


def weights(k: int, kind: str) -> np.ndarray:
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    if kind == "unweighted":
        return (i == j).astype(float)
    d = np.abs(i - j) / (k - 1)
    if kind == "linear":
        return 1 - d
    if kind == "quadratic":
        return 1 - d ** 2
    raise ValueError(f"unknown weighting {kind!r}")


def kappa_from_table(counts: np.ndarray, kind: str = "unweighted", level: float = 0.95) -> dict:
    counts = np.asarray(counts, float)
    n = counts.sum()
    p = counts / n
    w = weights(len(p), kind)
    pr, pc = p.sum(1), p.sum(0)
    po = (w * p).sum()
    pe = (w * np.outer(pr, pc)).sum()
    k = (po - pe) / (1 - pe)
    wr = w @ pc  # mean weight of row category i
    wc = pr @ w  # mean weight of column category j
    var = ((p * (w - (wr[:, None] + wc[None, :]) * (1 - k)) ** 2).sum() - (k - pe * (1 - k)) ** 2) / (n * (1 - pe) ** 2)
    ase = float(np.sqrt(max(var, 0.0)))
    z = stats.norm.ppf(0.5 + level / 2)
    return {"kappa": float(k), "ase": ase, "ci": [float(k - z * ase), float(k + z * ase)], "n": int(n)}


def kappa(a: Sequence, b: Sequence, kind: str = "unweighted", categories: Sequence = READER_CATEGORIES) -> dict:
    return kappa_from_table(table(a, b, categories), kind)
