"""End-to-end evaluation of a model against ground truth: unseen phantom seeds, or a site's
labelled cases (CASES.csv as for `llnassist dataset export`).

Each case goes through the same `analyze()` a user runs (files written and read back), so the
figures measure the shipped path, not a shortcut. A labelled case's reference nodes are measured
from its label map by the same code that measures the model's (nodes.extract_nodes), so the
short-axis error is the segmentations' difference. Confidence intervals are 95 % percentile
bootstraps over cases (nodes of one patient are not independent).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from . import conventions as C
from .errors import InputError

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
        "case": f"seed {seed}", "seed": seed, "n_truth": len(truth), "n_pred": len(pred), "matched": len(pairs),
        "pairs": [{"truth": truth[i], "pred": {k: pred[j][k] for k in ("node_id", "side", "region", "dl_status",
                                                                        "short_axis_mm", "long_axis_mm")}}
                  for i, j in pairs],
        "patient_truth": ph.truth["patient_status"], "patient_pred": summary["patient_status"],
        "dice": dice_per_label(ph.labels, pred_labels), "wall_s": wall, "timings_s": summary["timings_s"],
    }


def _truth_nodes(labels: sitk.Image, image: sitk.Image) -> list[dict]:
    """A label map's nodes in the phantom truth's keys."""
    from .nodes import extract_nodes

    return [{"centroid_r": float(n.centroid_ras[0]), "centroid_a": float(n.centroid_ras[1]),
             "centroid_s": float(n.centroid_ras[2]), "status": n.dl_status, "side": n.side, "region": n.region,
             "short_axis_mm": float(n.short_axis_mm)} for n in extract_nodes(labels, image)]


def evaluate_labelled_case(case_id: str, image_path: Path, image: sitk.Image, truth_labels: sitk.Image,
                           analyze_opts, workdir: Path) -> dict:
    from .domain import OutOfDomain
    from .pipeline import analyze

    truth = _truth_nodes(truth_labels, image)
    truth_arr = sitk.GetArrayFromImage(truth_labels)
    patient_truth = "positive" if any(n["status"] == "positive" for n in truth) else "negative"
    out = workdir / f"case-{len(list(workdir.iterdir()))}"
    t0 = time.perf_counter()
    record = {"case": case_id, "n_truth": len(truth), "patient_truth": patient_truth}
    try:
        summary = analyze(image_path, out, analyze_opts)
    except OutOfDomain as exc:  # a refusal is a result: its nodes count as missed
        return {**record, "refused": str(exc).splitlines()[0], "n_pred": 0, "matched": 0, "pairs": [],
                "patient_pred": None, "dice": {}, "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    pred = json.loads((out / "nodes.json").read_text(encoding="utf-8"))
    pred_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    pairs = match_nodes(truth, pred)
    shutil.rmtree(out, ignore_errors=True)
    return {**record, "n_pred": len(pred), "matched": len(pairs),
            "pairs": [{"truth": truth[i], "pred": {k: pred[j][k] for k in ("node_id", "side", "region", "dl_status",
                                                                            "short_axis_mm", "long_axis_mm")}}
                      for i, j in pairs],
            "patient_pred": summary["patient_status"], "dice": dice_per_label(truth_arr, pred_labels), "wall_s": wall,
            "timings_s": summary["timings_s"]}


def _r4(v: Optional[float]) -> Optional[float]:
    return None if v is None else round(v, 4)


def _frac(x) -> Optional[float]:
    return float(np.mean(x)) if len(x) else None


def _metrics(cases: list[dict]) -> dict:
    """The point estimates over a list of case records (also each bootstrap resample's)."""
    n_truth = sum(c["n_truth"] for c in cases)
    matched = [p for c in cases for p in c["pairs"]]
    analysed = [c for c in cases if c.get("patient_pred") is not None]
    sa_err = [abs(p["truth"]["short_axis_mm"] - float(p["pred"]["short_axis_mm"])) for p in matched]
    out = {
        "detection_sensitivity": len(matched) / n_truth if n_truth else None,
        "false_positives_per_case": _frac([c["n_pred"] - c["matched"] for c in analysed]),
        "node_status_accuracy": _frac([p["truth"]["status"] == p["pred"]["dl_status"] for p in matched]),
        "node_sensitivity_positive": _frac([p["pred"]["dl_status"] == "positive" for p in matched
                                            if p["truth"]["status"] == "positive"]),
        "node_specificity_negative": _frac([p["pred"]["dl_status"] == "negative" for p in matched
                                            if p["truth"]["status"] == "negative"]),
        "side_accuracy": _frac([p["truth"]["side"] == p["pred"]["side"] for p in matched]),
        "region_accuracy": _frac([p["truth"]["region"] == p["pred"]["region"] for p in matched]),
        "patient_status_accuracy": _frac([c["patient_truth"] == c["patient_pred"] for c in analysed]),
        "median_short_axis_error_mm": float(np.median(sa_err)) if sa_err else None,
    }
    for v in range(1, C.NUM_CLASSES):
        vals = [c["dice"][v] for c in analysed if v in c["dice"]]
        out[f"dice:{C.LABEL_NAMES[v]}"] = float(np.mean(vals)) if vals else None
    return out


def _ci(cases: list[dict], n_boot: int, seed: int) -> dict:
    """95 % percentile bootstrap over cases, per metric."""
    rng = np.random.default_rng(seed)
    n = len(cases)
    draws: dict = {}
    for _ in range(n_boot):
        for k, v in _metrics([cases[i] for i in rng.integers(0, n, n)]).items():
            if v is not None:
                draws.setdefault(k, []).append(v)
    return {k: [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)]
            for k, v in draws.items() if len(v) >= n_boot // 2}


def summarise(cases: list[dict], n_boot: int = 2000, seed: int = 0) -> dict:
    point = _metrics(cases)
    ci = _ci(cases, n_boot, seed) if cases else {}
    matched = [p for c in cases for p in c["pairs"]]
    fp = [c["n_pred"] - c["matched"] for c in cases if c.get("patient_pred") is not None]
    sa_err = [abs(p["truth"]["short_axis_mm"] - float(p["pred"]["short_axis_mm"])) for p in matched]
    out = {
        "cases": len(cases), "case_ids": [c["case"] for c in cases],
        "refused_cases": sum(1 for c in cases if c.get("refused")),
        "truth_nodes": sum(c["n_truth"] for c in cases),
        "match_rule": f"centroid within {MATCH_DISTANCE_MM:g} mm, one-to-one",
        **{k: _r4(v) for k, v in point.items() if not k.startswith("dice:")},
        "max_false_positives_in_a_case": int(max(fp)) if fp else None,
        "p90_short_axis_error_mm": round(float(np.percentile(sa_err, 90)), 3) if sa_err else None,
        "dice": {k[5:]: _r4(v) for k, v in point.items() if k.startswith("dice:") and v is not None},
        "ci95": {**{k: v for k, v in ci.items() if not k.startswith("dice:")},
                 **({"dice": {k[5:]: v for k, v in ci.items() if k.startswith("dice:")}} if ci else {})},
        "ci_method": f"percentile bootstrap over cases, {n_boot} resamples",
        "median_case_wall_s": round(statistics.median(c["wall_s"] for c in cases), 2) if cases else None,
    }
    if all("seed" in c for c in cases):
        out["seeds"] = [c["seed"] for c in cases]
    if out["refused_cases"]:
        out["note"] = ("refused cases count as missed nodes in detection sensitivity; status accuracy, false "
                       "positives and Dice are over the analysed cases")
    return out


def _manifest_target(model: Optional[str]):
    """(path of the manifest that takes the evaluation, its contents); refused before any work when
    the model has none (an unregistered foreign model)."""
    from .model import manifest as M
    from .model import registry

    folder = registry.resolve(model) if model and not Path(model).exists() else None
    folder = folder or (Path(model) if model and Path(model).is_dir() else M.resolve_model_dir(model))
    for name in (M.MANIFEST, "llnassist.json"):
        if (folder / name).is_file():
            return folder / name, json.loads((folder / name).read_text(encoding="utf-8"))
    raise InputError(f"{folder} has no LLNAssist manifest to write the evaluation into; register the model with "
                     "`llnassist models add` first")


def _write_evaluation(target, summary: dict, device: str) -> None:
    import platform

    import torch

    from .atomic import write_text

    path, man = target
    man["evaluation"] = {**summary, "device": device, "cpu_threads": torch.get_num_threads(),
                         "machine": platform.machine()}
    write_text(path, json.dumps(man, indent=2) + "\n")


def evaluate_model(model: Optional[str], seeds: Optional[list] = None, device: str = "auto",
                   write_manifest: bool = False, progress: Callable = lambda *a, **k: None,
                   cases_csv: Optional[str] = None) -> dict:
    """Phantom seeds, or the labelled cases of `cases_csv`."""
    from .pipeline import AnalysisOptions

    target = _manifest_target(model) if write_manifest else None
    opts = AnalysisOptions(model=model, device=device, key_images=False, reuse_model=True)
    cases = []
    with tempfile.TemporaryDirectory(prefix="llnassist-eval-") as tmp:
        if cases_csv:
            from .csvtable import read_table
            from .dataset import read_cases
            from .model.manifest import sha256_file

            rows = read_table(cases_csv, ("case_id", "image", "labels"), "cases")
            for i, (_, cid, image_path, _, loaded, got) in enumerate(read_cases(cases_csv, rows)):
                cases.append(evaluate_labelled_case(cid, image_path, loaded.image, got.labels, opts, Path(tmp)))
                progress("evaluate", (i + 1) / len(rows), f"case {cid}")
            data = {"kind": "labelled cases", "table": Path(cases_csv).name, "table_sha256": sha256_file(
                Path(cases_csv))}
        else:
            for i, seed in enumerate(seeds):
                cases.append(evaluate_case(seed, opts, Path(tmp)))
                progress("evaluate", (i + 1) / len(seeds), f"seed {seed}")
            data = {"kind": "phantom seeds"}
    summary = {"data": data, **summarise(cases)}
    if target is not None:
        _write_evaluation(target, summary, device)
    return {"summary": summary, "cases": cases}
