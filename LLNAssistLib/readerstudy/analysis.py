"""A study's submitted reads as analysis rows: node level, each rated node matched to the
reference-standard node it points at, so `stats.readerstudy_analysis` can give the patient-level
(most suspicious node) primary analysis and the clustered node-level one."""

from __future__ import annotations

import math

from ..errors import InputError
from ..stats.readerstudy_analysis import analyze_rows
from .study import Study

# A rated point (or AI node centroid) within this distance of a reference node's centroid refers
# to that node; lateral nodes are >= ~3 mm apart and slices 3-4 mm thick.
MATCH_MM = 7.5


def _centroid(d: dict):
    try:
        return tuple(float(d[k]) for k in ("centroid_r", "centroid_a", "centroid_s"))
    except (KeyError, TypeError, ValueError):
        return None


def match_node(rating: dict, case: dict):
    """(reference node id, truth 0/1) for a rating, or (None, 0) when it points at no reference node."""
    where = tuple(rating["point"]) if rating.get("point") else None
    if where is None and rating.get("ai_node_id") and case.get("ai"):
        for n in case["ai"].get("nodes", []):
            if str(n.get("node_id")) == str(rating["ai_node_id"]):
                where = _centroid(n)
    if where is None:
        return None, 0
    best, dist = None, MATCH_MM
    for n in case.get("truth_nodes") or []:
        c = _centroid(n)
        if c is not None and math.dist(c, where) <= dist:
            best, dist = n, math.dist(c, where)
    if best is None:
        return None, 0
    return str(best.get("node_id")), int(str(best.get("status", "")).lower() in ("positive", "1", "true"))


def study_rows(study: Study) -> list[dict]:
    cases = {c["case_id"]: c for c in study.cases(include_training=False)}
    rows = []
    for r in study.final_ratings():
        case = cases[r["case"]]
        ai = case.get("ai") or {}
        row = {"reader": r["reader"], "modality": r["modality"], "case": r["case"], "rating": float(r["rating"]),
               "most_suspicious": r["most_suspicious"] == "yes"}
        if r["call"]:
            row["call"] = r["call"] == "yes"
        if ai.get("probability") is not None:
            row["ai_probability"] = float(ai["probability"])
        if ai.get("status"):
            row["ai_status"] = ai["status"]
        if case.get("truth_nodes"):
            point = [r["r"], r["a"], r["s"]] if r["r"] is not None else None
            ref, truth = match_node({"point": point, "ai_node_id": r["ai_node_id"]}, case)
            row["node"] = ref or f"unmatched:{r['node_key']}"
            row["truth"] = truth
        else:
            row["truth"] = int(case["truth"])
        rows.append(row)
    if not rows:
        raise InputError("the study has no submitted reads yet; nothing to analyse")
    if any("node" in r for r in rows) and not all("node" in r for r in rows):
        raise InputError("some cases have node-level reference standards and some do not; give truth nodes for "
                         "all cases or none")
    for r in rows:
        # The patient truth is the case's reference standard, not only the nodes the readers found.
        r["case_truth"] = int(cases[r["case"]]["truth"])
    return rows


def analyze_study(study: Study, level: float = 0.95):
    rows = study_rows(study)
    return analyze_rows(rows, level)
