"""End-to-end evaluation of a model on unseen phantom seeds against their ground truth.

Each case goes through the same `analyze()` a user runs (files written and read back), so the
figures measure the shipped path, not a shortcut.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from . import conventions as C

MATCH_DISTANCE_MM = 5.0


def match_nodes(truth: list[dict], pred: list[dict], max_mm: float = MATCH_DISTANCE_MM) -> list[tuple[int, int]]:
    """Greedy one-to-one matching by centroid distance (closest pairs first), within max_mm."""
    if not truth or not pred:
        return []
    t = np.array([[n["centroid_r"], n["centroid_a"], n["centroid_s"]] for n in truth], float)
    p = np.array([[float(n["centroid_r"]), float(n["centroid_a"]), float(n["centroid_s"])] for n in pred], float)
    d = np.linalg.norm(t[:, None, :] - p[None, :, :], axis=-1)
    pairs, used_t, used_p = [], set(), set()
    for flat in np.argsort(d, axis=None):
        i, j = np.unravel_index(int(flat), d.shape)
        if d[i, j] > max_mm:
            break
        if i in used_t or j in used_p:
            continue
        pairs.append((int(i), int(j)))
        used_t.add(i)
        used_p.add(j)
    return pairs


def dice_per_label(truth: np.ndarray, pred: np.ndarray) -> dict:
    out = {}
    for v in range(1, C.NUM_CLASSES):
        a, b = truth == v, pred == v
        s = int(a.sum() + b.sum())
        if s:
            out[v] = 2.0 * float((a & b).sum()) / s
    return out


def evaluate_case(seed: int, analyze_opts, workdir: Path) -> dict:
    from . import phantom
    from .pipeline import analyze

    ph = phantom.generate(seed)
    case = workdir / f"case{seed}"
    phantom.write(ph, case)
    t0 = time.perf_counter()
    summary = analyze(case / "image.nii.gz", case / "out", analyze_opts)
    wall = time.perf_counter() - t0
    pred = json.loads((case / "out" / "nodes.json").read_text(encoding="utf-8"))
    pred_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "out" / "labels.nii.gz")))
    truth = ph.truth["nodes"]
    pairs = match_nodes(truth, pred)
    return {
        "seed": seed, "n_truth": len(truth), "n_pred": len(pred), "matched": len(pairs),
        "pairs": [{"truth": truth[i], "pred": {k: pred[j][k] for k in ("node_id", "side", "region", "dl_status",
                                                                        "short_axis_mm", "long_axis_mm")}}
                  for i, j in pairs],
        "patient_truth": ph.truth["patient_status"], "patient_pred": summary["patient_status"],
        "dice": dice_per_label(ph.labels, pred_labels), "wall_s": wall, "timings_s": summary["timings_s"],
    }


def summarise(cases: list[dict]) -> dict:
    n_truth = sum(c["n_truth"] for c in cases)
    matched = [p for c in cases for p in c["pairs"]]
    fp = [c["n_pred"] - c["matched"] for c in cases]
    status_ok = [p["truth"]["status"] == p["pred"]["dl_status"] for p in matched]
    side_ok = [p["truth"]["side"] == p["pred"]["side"] for p in matched]
    region_ok = [p["truth"]["region"] == p["pred"]["region"] for p in matched]
    sa_err = [abs(p["truth"]["short_axis_mm"] - float(p["pred"]["short_axis_mm"])) for p in matched]
    dice = {}
    for v in range(1, C.NUM_CLASSES):
        vals = [c["dice"][v] for c in cases if v in c["dice"]]
        if vals:
            dice[C.LABEL_NAMES[v]] = round(float(np.mean(vals)), 4)
    pos_truth = [p for p in matched if p["truth"]["status"] == "positive"]
    neg_truth = [p for p in matched if p["truth"]["status"] == "negative"]

    def frac(x):
        return round(float(np.mean(x)), 4) if x else None

    return {
        "cases": len(cases), "seeds": [c["seed"] for c in cases], "truth_nodes": n_truth,
        "detection_sensitivity": round(len(matched) / n_truth, 4) if n_truth else None,
        "match_rule": f"centroid within {MATCH_DISTANCE_MM:g} mm, one-to-one",
        "false_positives_per_case": round(float(np.mean(fp)), 3), "max_false_positives_in_a_case": int(max(fp)),
        "node_status_accuracy": frac(status_ok),
        "node_sensitivity_positive": frac([p["pred"]["dl_status"] == "positive" for p in pos_truth]),
        "node_specificity_negative": frac([p["pred"]["dl_status"] == "negative" for p in neg_truth]),
        "side_accuracy": frac(side_ok), "region_accuracy": frac(region_ok),
        "patient_status_accuracy": frac([c["patient_truth"] == c["patient_pred"] for c in cases]),
        "median_short_axis_error_mm": round(statistics.median(sa_err), 3) if sa_err else None,
        "p90_short_axis_error_mm": round(float(np.percentile(sa_err, 90)), 3) if sa_err else None,
        "dice": dice,
        "median_case_wall_s": round(statistics.median(c["wall_s"] for c in cases), 2),
    }


def evaluate_model(model: Optional[str], seeds: list[int], device: str = "auto", write_manifest: bool = False,
                   progress: Callable = lambda *a, **k: None) -> dict:
    from .model import manifest as M
    from .pipeline import AnalysisOptions

    opts = AnalysisOptions(model=model, device=device, key_images=False)
    cases = []
    with tempfile.TemporaryDirectory(prefix="llnassist-eval-") as tmp:
        for i, seed in enumerate(seeds):
            cases.append(evaluate_case(seed, opts, Path(tmp)))
            progress("evaluate", (i + 1) / len(seeds), f"seed {seed}")
    summary = summarise(cases)
    if write_manifest:
        model_dir = M.resolve_model_dir(model)
        man = M.read_manifest(model_dir)
        import platform

        import torch

        summary["device"] = device
        summary["cpu_threads"] = torch.get_num_threads()
        summary["machine"] = platform.machine()
        man["evaluation"] = summary
        M.write_manifest(model_dir, man)
    return {"summary": summary, "cases": cases}
