"""`llnassist analyze` end to end on a phantom seed never used in training, checked against its truth."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from LLNAssistLib import conventions as C
from LLNAssistLib.evaluate import match_nodes
from LLNAssistLib.model import manifest as M

CONTRACT_COLUMNS = ["node_id", "side", "region", "dl_status", "short_axis_mm", "long_axis_mm", "volume_mm3",
                    "centroid_r", "centroid_a", "centroid_s", "radiomics_score", "radiomics_probability",
                    "size_positive"]


def test_outputs_exist_and_follow_the_contract(analyzed, small_case):
    out, proc = analyzed
    names = {p.name for p in out.iterdir()}
    assert {"nodes.csv", "summary.json", "labels.nii.gz", "segmentation.seg.nrrd", "report.html"} <= names
    assert not [p for p in out.parent.iterdir() if ".partial" in p.name]
    with open(out / "nodes.csv") as f:
        rows = list(csv.DictReader(f))
    header = (out / "nodes.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header == CONTRACT_COLUMNS
    s = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    for k in ("patient_status", "n_nodes", "n_positive", "max_short_axis_mm", "model", "timings_s", "versions"):
        assert k in s
    man = M.read_manifest(M.resolve_model_dir(None))
    assert s["model"]["id"] == man["id"] and s["model"]["sha256"] == man["sha256"]
    stages = {"load", "preprocess", "inference", "postprocess", "measurement", "radiomics", "write"}
    assert stages <= set(s["timings_s"])
    assert s["n_nodes"] == len(rows) and s["n_positive"] == sum(r["dl_status"] == "positive" for r in rows)
    # progress went to stderr, named stages
    assert "inference" in proc.stderr and "radiomics" in proc.stderr
    # labels on exactly the input grid
    img = sitk.ReadImage(str(small_case / "image.nii.gz"))
    lab = sitk.ReadImage(str(out / "labels.nii.gz"))
    assert lab.GetSize() == img.GetSize()
    assert np.allclose(lab.GetDirection(), img.GetDirection()) and np.allclose(lab.GetOrigin(), img.GetOrigin())


def test_nodes_agree_with_phantom_truth(analyzed, small_phantom):
    out, _ = analyzed
    with open(out / "nodes.csv") as f:
        pred = list(csv.DictReader(f))
    truth = small_phantom.truth["nodes"]
    pairs = match_nodes(truth, pred)
    assert len(pairs) >= len(truth) - 1  # sensitivity on one case: at most one miss of 4
    assert len(pred) - len(pairs) <= 1  # at most one false positive
    for i, j in pairs:
        t, p = truth[i], pred[j]
        assert p["side"] == t["side"] and p["region"] == t["region"]
        assert abs(float(p["short_axis_mm"]) - t["short_axis_mm"]) < 2.0
        rp = float(p["radiomics_probability"])
        assert 0 < rp < 1 and rp == pytest.approx(1 / (1 + np.exp(-float(p["radiomics_score"]))), abs=1e-4)
        assert (p["size_positive"] == "True") == (float(p["short_axis_mm"]) >= 7.0)
    errs = [abs(float(pred[j]["short_axis_mm"]) - truth[i]["short_axis_mm"]) for i, j in pairs]
    assert np.median(errs) <= 1.0
    s = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert s["patient_status"] == small_phantom.truth["patient_status"]


def test_segmentation_file_has_named_coloured_coded_segments(analyzed):
    import slicerio

    out, _ = analyzed
    seg = slicerio.read_segmentation(str(out / "segmentation.seg.nrrd"))
    with open(out / "nodes.csv") as f:
        rows = list(csv.DictReader(f))
    names = {s["name"]: s for s in seg["segments"]}
    for r in rows:
        name = C.node_segment_name(r["node_id"], r["dl_status"], r["side"], r["region"])
        assert name in names
        colour = np.array(names[name]["color"]) * 255
        assert np.allclose(colour, C.LABEL_COLORS[C.LABEL_FROM_STATUS[r["dl_status"]]], atol=1)
        term = names[name]["terminology"]
        assert term["type"][1] == C.REGION_SITE_CODE[r["region"]].value
        assert term["typeModifier"][1] == C.LATERALITY_CODE[r["side"]].value
    regions = [n for n in names if "region (" in n]
    assert "Obturator region (left)" in regions and "Internal iliac region (right)" in regions
    # each node segment holds exactly that node's voxels: its volume in nodes.csv
    vox_mm3 = float(np.prod(sitk.ReadImage(str(out / "labels.nii.gz")).GetSpacing()))
    for r in rows:
        s = names[C.node_segment_name(r["node_id"], r["dl_status"], r["side"], r["region"])]
        vox = seg["voxels"] if seg["voxels"].ndim == 3 else seg["voxels"][s["layer"]]
        assert int((vox == s["labelValue"]).sum()) * vox_mm3 == pytest.approx(float(r["volume_mm3"]), abs=0.1)


def test_report_reads_like_a_structured_report(analyzed):
    out, _ = analyzed
    html = (out / "report.html").read_text(encoding="utf-8")
    with open(out / "nodes.csv") as f:
        rows = list(csv.DictReader(f))
    assert "Not for clinical use" in html and "synthetic" in html
    assert "Lateral lymph node status (model)" in html and "Impression:" in html
    assert html.count("data:image/png;base64,") >= len(rows) + 1  # key image per node + overview
    for r in rows:
        assert f"<b>Node {r['node_id']}</b>" in html
    assert "sha256" in html.lower()
