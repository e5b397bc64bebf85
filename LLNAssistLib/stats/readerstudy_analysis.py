"""`llnassist study analyze` on a ratings table: per-reader AUC with DeLong variance and CI, paired
DeLong tests per reader, OR MRMC (jackknife and DeLong covariance) and DBM. Contract in DESIGN.md."""

from __future__ import annotations

import csv
import math
import os

import numpy as np

from ..errors import InputError
from . import kappa, mrmc, roc

COLUMNS = ("reader", "modality", "case", "truth", "rating")
# On the 1-5 scale: >= 3 "possibly malignant" and >= 4 "probably malignant" called positive.
OPERATING_THRESHOLDS = (3.0, 4.0)


def read_ratings(path: str | os.PathLike) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"ratings file {path} lacks column(s) {', '.join(missing)}; it needs "
                                 f"{','.join(COLUMNS)}")
            rows = list(reader)
    except FileNotFoundError:
        raise InputError(f"ratings file {path} does not exist; check the path") from None
    except (UnicodeDecodeError, csv.Error):
        raise InputError(f"ratings file {path} is not a readable CSV; export it as UTF-8 CSV") from None
    if not rows:
        raise InputError(f"ratings file {path} has no rows; add ratings")
    out = []
    for n, r in enumerate(rows, start=2):
        try:
            rating = float(r["rating"])
        except (TypeError, ValueError):
            raise InputError(f"line {n}: rating {r['rating']!r} is not a number; ratings must be numeric "
                             "(e.g. 1-5)") from None
        if not math.isfinite(rating):
            raise InputError(f"line {n}: rating {r['rating']!r} is not finite; give a number")
        if (r["truth"] or "").strip() not in ("0", "1"):
            raise InputError(f"line {n}: truth {r['truth']!r} must be 0 or 1")
        out.append({"reader": r["reader"].strip(), "modality": r["modality"].strip(), "case": r["case"].strip(),
                    "truth": int(r["truth"]), "rating": rating})
    return out


def to_arrays(rows: list[dict]):
    modalities = sorted({r["modality"] for r in rows})
    if len(modalities) != 2:
        raise InputError(f"found {len(modalities)} modality value(s) ({', '.join(modalities)}); exactly two are "
                         "needed (e.g. unaided, aided)")
    readers = sorted({r["reader"] for r in rows})
    cases = sorted({r["case"] for r in rows})
    truth = {}
    cell = {}
    for r in rows:
        if truth.setdefault(r["case"], r["truth"]) != r["truth"]:
            raise InputError(f"case {r['case']} has both truth 0 and 1; a case has one reference standard")
        key = (r["modality"], r["reader"], r["case"])
        if key in cell:
            raise InputError(f"reader {key[1]} rated case {key[2]} twice in modality {key[0]}; keep one rating")
        cell[key] = r["rating"]
    missing = [(m, rd, c) for m in modalities for rd in readers for c in cases if (m, rd, c) not in cell]
    if missing:
        m, rd, c = missing[0]
        raise InputError(f"{len(missing)} rating(s) missing for a fully crossed design (first: reader {rd}, "
                         f"modality {m}, case {c}); every reader must rate every case in both modalities")
    t = np.array([truth[c] for c in cases])
    if t.min() == t.max():
        raise InputError("all cases have the same truth; an ROC analysis needs diseased and non-diseased cases")
    ratings = np.array([[[cell[(m, rd, c)] for c in cases] for rd in readers] for m in modalities])
    return modalities, readers, cases, t, ratings


def _reader_kappas(ratings: np.ndarray, readers: list, modalities: list) -> list[dict]:
    """Between-reader Cohen's kappa per modality, categories fixed to the 1-5 reader scale."""
    if not np.isin(ratings, kappa.READER_CATEGORIES).all():
        return []  # continuous or other scales: kappa on the 1-5 scale does not apply
    out = []
    for i, m in enumerate(modalities):
        for a in range(len(readers)):
            for b in range(a + 1, len(readers)):
                row = {"modality": m, "reader_a": readers[a], "reader_b": readers[b]}
                for kind in ("unweighted", "linear", "quadratic"):
                    row[kind] = kappa.kappa(ratings[i, a].astype(int), ratings[i, b].astype(int), kind)
                out.append(row)
    return out


def analyze_ratings(rows: list[dict], level: float = 0.95) -> dict:
    return analyze_arrays(*to_arrays(rows), level=level)


def analyze_arrays(modalities: list, readers: list, cases: list, truth: np.ndarray, ratings: np.ndarray,
                   level: float = 0.95) -> dict:
    """The analysis of a fully crossed (modality, reader, case) ratings array, as `to_arrays` makes it."""
    out: dict = {"modalities": {}, "readers": {}, "delong": [], "mrmc": {},
                 "n_cases": len(cases), "n_diseased": int(truth.sum()), "n_readers": len(readers),
                 "modality_order": modalities, "difference": f"{modalities[0]} minus {modalities[1]}"}
    for j, rd in enumerate(readers):
        d = roc.delong([ratings[0, j], ratings[1, j]], truth)
        out["readers"][rd] = {}
        for i, m in enumerate(modalities):
            a, v = float(d.aucs[i]), float(d.cov[i, i])
            out["readers"][rd][m] = {"auc": a, "auc_var": v, "auc_ci": list(roc.auc_ci(a, v, level)),
                                     "operating_points": [roc.operating_point(ratings[i, j], truth, th, level)
                                                          for th in OPERATING_THRESHOLDS]}
        test = roc.paired_from(d, level)
        out["delong"].append({"reader": rd, "modality_a": modalities[0], "modality_b": modalities[1], **test})
    if len(readers) >= 2:
        for method in ("jackknife", "delong"):
            res = mrmc.obuchowski_rockette(ratings, truth, method, level)
            out["mrmc"][f"or_{method}"] = {k: res[k] for k in ("rrrc", "frrc", "rrfc", "var", "cov1", "cov2", "cov3")}
        out["mrmc"]["dbm"] = mrmc.dbm(ratings, truth)
    out["kappa"] = _reader_kappas(ratings, readers, modalities)
    for m in modalities:
        out["modalities"][m] = {"mean_auc": float(np.mean([out["readers"][rd][m]["auc"] for rd in readers]))}
    return out
