"""`llnassist study analyze` on a ratings table: per-reader AUC with DeLong variance and CI, paired
DeLong tests per reader, OR MRMC (jackknife and DeLong covariance) and DBM. Contract in DESIGN.md."""

from __future__ import annotations

import math
import os

import numpy as np

from ..csvtable import read_table
from ..errors import InputError
from . import clustered, kappa, mrmc, roc

COLUMNS = ("reader", "modality", "case", "truth", "rating")
# Optional columns: call (binary decision yes/no or 1/0), ai_probability, ai_status (positive/negative),
# node (then rows are node-level: truth is the node's, and the patient level takes each reader's
# most suspicious node per case).
OPTIONAL = ("call", "ai_probability", "ai_status", "node")
# AI probability on the 1-5 scale for kappa against readers: equal-width fifths of [0, 1].
AI_SCALE_EDGES = (0.2, 0.4, 0.6, 0.8)
# On the 1-5 scale: >= 3 "possibly malignant" and >= 4 "probably malignant" called positive.
OPERATING_THRESHOLDS = (3.0, 4.0)


def read_ratings(path: str | os.PathLike) -> list[dict]:
    rows = read_table(path, COLUMNS, "ratings")
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
        row = {"reader": r["reader"].strip(), "modality": r["modality"].strip(), "case": r["case"].strip(),
               "truth": int(r["truth"]), "rating": rating}
        for c in OPTIONAL:
            v = (r.get(c) or "").strip()
            if v:
                row[c] = v
        if "call" in row:
            row["call"] = _yes_no(row["call"], f"line {n}: call")
        if "ai_probability" in row:
            try:
                row["ai_probability"] = float(row["ai_probability"])
            except ValueError:
                raise InputError(f"line {n}: ai_probability {row['ai_probability']!r} is not a number") from None
        out.append(row)
    return out


def _yes_no(v, what: str) -> bool:
    t = str(v).strip().lower()
    if t in ("yes", "1", "true", "positive"):
        return True
    if t in ("no", "0", "false", "negative"):
        return False
    raise InputError(f"{what} {v!r} must be yes or no")


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
    return analyze_rows(rows, level)[0]


def patient_level(rows: list[dict]) -> list[dict]:
    """Node-level rows to one row per reader, modality and case: the most suspicious node (the one
    flagged `most_suspicious`, else the highest rating; its binary call). Patient truth: `case_truth`
    when given, else positive if any rated node is."""
    best: dict = {}
    truth: dict = {}
    for r in rows:
        truth[r["case"]] = r["case_truth"] if "case_truth" in r else max(truth.get(r["case"], 0), r["truth"])
        key = (r["reader"], r["modality"], r["case"])
        flagged = r.get("most_suspicious") is True
        if key not in best or (flagged and best[key].get("most_suspicious") is not True) or (
                r["rating"] > best[key]["rating"] and best[key].get("most_suspicious") is not True):
            best[key] = r
    return [{**r, "truth": truth[r["case"]]} for r in best.values()]


def analyze_rows(rows: list[dict], level: float = 0.95):
    """Everything the study analysis reports; returns (result, arrays for the HTML report)."""
    node_level = any("node" in r for r in rows)
    patient = patient_level(rows) if node_level else rows
    arrays = to_arrays(patient)
    modalities, readers, cases, truth, ratings = arrays
    res = analyze_arrays(*arrays, level=level)
    res["unit"] = "patient (most suspicious node)" if node_level else "case"
    cell = {(r["modality"], r["reader"], r["case"]): r for r in patient}
    if all("call" in r for r in patient):
        res["binary_call"] = _binary_calls(cell, modalities, readers, cases, truth, level)
    ai = _ai_per_case(patient, cases)
    if ai:
        res["ai"] = _ai_alone(ai, cases, truth, level)
        res["kappa_vs_ai"] = _kappa_vs_ai(cell, ai, modalities, readers, cases)
    if node_level:
        res["node_level"] = _node_level(rows, modalities, readers, level)
    return res, arrays


def _binary_calls(cell, modalities, readers, cases, truth, level) -> dict:
    out: dict = {}
    for rd in readers:
        out[rd] = {}
        for m in modalities:
            calls = np.array([1.0 if cell[(m, rd, c)]["call"] else 0.0 for c in cases])
            op = roc.operating_point(calls, truth, 0.5, level)
            op.pop("threshold")
            out[rd][m] = op
    return out


def _ai_per_case(rows: list[dict], cases: list) -> dict:
    ai: dict = {}
    for r in rows:
        if "ai_probability" in r or "ai_status" in r:
            ai.setdefault(r["case"], {}).update({k: r[k] for k in ("ai_probability", "ai_status") if k in r})
    return ai if all(c in ai for c in cases) else {}


def _ai_alone(ai: dict, cases: list, truth: np.ndarray, level: float) -> dict:
    out: dict = {}
    if all("ai_probability" in ai[c] for c in cases):
        p = np.array([ai[c]["ai_probability"] for c in cases], float)
        d = roc.delong([p], truth)
        a, v = float(d.aucs[0]), float(d.cov[0, 0])
        out["probability"] = {"auc": a, "auc_var": v, "auc_ci": list(roc.auc_ci(a, v, level))}
    if all("ai_status" in ai[c] for c in cases):
        st = np.array([1.0 if _yes_no(ai[c]["ai_status"], f"case {c}: ai_status") else 0.0 for c in cases])
        op = roc.operating_point(st, truth, 0.5, level)
        op.pop("threshold")
        out["status"] = op
    return out


def _ai_category(p: float) -> int:
    return 1 + int(np.searchsorted(AI_SCALE_EDGES, p, side="right"))


def _kappa_vs_ai(cell, ai, modalities, readers, cases) -> list[dict]:
    """Each reader against the AI: the binary call vs the AI status (two categories) and the 1-5
    score vs the AI probability in fifths (1-5)."""
    out = []
    for m in modalities:
        for rd in readers:
            row: dict = {"modality": m, "reader": rd}
            if all("call" in cell[(m, rd, c)] for c in cases) and all("ai_status" in ai[c] for c in cases):
                a = [int(cell[(m, rd, c)]["call"]) for c in cases]
                b = [int(_yes_no(ai[c]["ai_status"], "ai_status")) for c in cases]
                row["call_vs_status"] = kappa.kappa(a, b, "unweighted", categories=(0, 1))
            scores = [cell[(m, rd, c)]["rating"] for c in cases]
            if all("ai_probability" in ai[c] for c in cases) and set(scores) <= set(kappa.READER_CATEGORIES):
                b = [_ai_category(ai[c]["ai_probability"]) for c in cases]
                for kind in ("unweighted", "linear", "quadratic"):
                    row[f"score_vs_probability_{kind}"] = kappa.kappa([int(x) for x in scores], b, kind)
            if len(row) > 2:
                out.append(row)
    return out


def _node_level(rows: list[dict], modalities: list, readers: list, level: float) -> dict:
    """Per reader and modality, node-level AUC with the clustered (Obuchowski 1997) variance; a paired
    test on the nodes the reader rated in both modalities (same `node` id)."""
    out: dict = {}
    for rd in readers:
        out[rd] = {}
        per = {m: {(r["case"], r["node"]): r for r in rows if r["reader"] == rd and r["modality"] == m}
               for m in modalities}
        for m in modalities:
            units = list(per[m].values())
            t = np.array([u["truth"] for u in units])
            if len(units) < 3 or t.min() == t.max() or len({u["case"] for u in units}) < 2:
                continue
            res = clustered.clustered_auc([[u["rating"] for u in units]], t, [u["case"] for u in units], level)
            out[rd][m] = {"auc": res["aucs"][0], "auc_var": res["cov"][0][0], "auc_ci": res["ci"][0],
                          "n_nodes": res["n_units"], "n_positive": res["n_diseased"], "n_patients": res["n_clusters"]}
        both = sorted(set(per[modalities[0]]) & set(per[modalities[1]]))
        t = np.array([per[modalities[0]][k]["truth"] for k in both])
        if len(both) >= 3 and t.min() != t.max() and len({k[0] for k in both}) >= 2:
            res = clustered.clustered_auc([[per[m][k]["rating"] for k in both] for m in modalities], t,
                                          [k[0] for k in both], level)
            out[rd]["paired"] = {"modality_a": modalities[0], "modality_b": modalities[1], "n_nodes": len(both),
                                 **res["paired"]}
    return out


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
