"""`llnassist dataset export`: reviewed cases -> an nnU-Net v2 raw dataset, checked by nnU-Net's own
integrity check; geometry and labels round-trip; bad cases refused with the case named and nothing
written; a case reviewed in a slicer-core scene exports with its reviewer."""

from __future__ import annotations

import json
import os
import re
import stat

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_cli

from LLNAssistLib import conventions as C
from LLNAssistLib import phantom
from LLNAssistLib.imageio import same_geometry
from LLNAssistLib.model.manifest import sha256_file


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    rows = ["case_id,image,labels,patient_id,reviewed_by"]
    for k in range(6):
        ph = phantom.generate(910200 + k, size=160, slices=12, n_nodes=2)
        phantom.write(ph, d / f"p{k}")
        # P0 and P1 are two scans of one patient: they must land in the same fold
        rows.append(f"P{k},p{k}/image.nii.gz,p{k}/labels.nii.gz,{'PT01' if k < 2 else f'PT0{k}'},R1")
    (d / "cases.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return d


def _write_csv(path, rows):
    path.write_text("case_id,image,labels,patient_id,reviewed_by\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_export_round_trips_and_passes_nnunets_own_check(cases, tmp_path):
    p = run_cli("dataset", "export", cases / "cases.csv", "--out", tmp_path / "raw", "--dataset-id", "501",
                check_rc=0)
    assert "integrity check passed" in p.stdout, p.stdout  # nnU-Net v2's verify_dataset_integrity ran
    folder = tmp_path / "raw" / "Dataset501_LLN"
    ds = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    assert ds["labels"] == {C.LABEL_NAMES[v]: v for v in range(C.NUM_CLASSES)}
    assert ds["channel_names"] == {"0": "T2"} and ds["numTraining"] == 6 and ds["file_ending"] == ".nii.gz"
    for k in range(6):
        for src, dst in ((cases / f"p{k}" / "image.nii.gz", folder / "imagesTr" / f"P{k}_0000.nii.gz"),
                         (cases / f"p{k}" / "labels.nii.gz", folder / "labelsTr" / f"P{k}.nii.gz")):
            a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(dst))
            assert same_geometry(a, b, tol=1e-6)
            assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    splits = json.loads((folder / "splits_final.json").read_text(encoding="utf-8"))
    assert len(splits) == 5
    vals = [set(f["val"]) for f in splits]
    assert set().union(*vals) == {f"P{k}" for k in range(6)} and sum(map(len, vals)) == 6
    assert any({"P0", "P1"} <= v for v in vals)  # one patient, one fold
    for f in splits:
        assert not set(f["train"]) & set(f["val"]) and len(f["train"]) + len(f["val"]) == 6
    prov = json.loads((folder / "provenance.json").read_text(encoding="utf-8"))
    for entry in prov["cases"]:
        assert entry["reviewed_by"] == "R1"
        assert entry["labels_sha256"] == sha256_file(folder / "labelsTr" / f"{entry['case']}.nii.gz")
        assert entry["source_labels_sha256"] == sha256_file(cases / f"p{entry['case'][1:]}" / "labels.nii.gz")
    # the same id again is refused (nnU-Net ids are unique), with nothing changed
    before = sorted(x.name for x in (tmp_path / "raw").iterdir())
    p = run_cli("dataset", "export", cases / "cases.csv", "--out", tmp_path / "raw", "--dataset-id", "501",
                "--name", "Other", check_rc=2)
    assert "already holds Dataset501_LLN" in p.stderr
    assert sorted(x.name for x in (tmp_path / "raw").iterdir()) == before


def _bad_variants(cases, analyzed, small_case, tmp):
    """(name, row for case BAD, expected message)"""
    lab = sitk.ReadImage(str(cases / "p0" / "labels.nii.gz"))
    arr = sitk.GetArrayFromImage(lab)
    out = []
    shifted = sitk.Image(lab)
    shifted.SetOrigin([o + 1.5 for o in lab.GetOrigin()])
    sitk.WriteImage(shifted, str(tmp / "shifted.nii.gz"))
    out.append(("geometry", f"BAD,p0/image.nii.gz,{tmp / 'shifted.nii.gz'},PTX,R1", "geometry"))
    unknown = arr.copy()
    unknown[0, 0, 0] = 7
    img = sitk.GetImageFromArray(unknown)
    img.CopyInformation(lab)
    sitk.WriteImage(img, str(tmp / "unknown.nii.gz"))
    out.append(("unknown label", f"BAD,p0/image.nii.gz,{tmp / 'unknown.nii.gz'},PTX,R1", "label value(s) 7"))
    outside = arr.copy()
    outside[:, :6, :6] = C.NODE_POSITIVE  # air in the image's corner
    outside[np.isin(arr, C.NODE_LABELS)] = 0
    img = sitk.GetImageFromArray(outside)
    img.CopyInformation(lab)
    sitk.WriteImage(img, str(tmp / "outside.nii.gz"))
    out.append(("node outside the body", f"BAD,p0/image.nii.gz,{tmp / 'outside.nii.gz'},PTX,R1", "outside the body"))
    # the analysed phantom's own segmentation with left and right swapped in every segment's name
    import slicerio

    seg = slicerio.read_segmentation(str(analyzed[0] / "segmentation.seg.nrrd"))
    swap = {"left": "right", "right": "left"}
    for s in seg["segments"]:
        for key in ("name", "id"):
            s[key] = re.sub(r"(?<![a-z])(left|right)(?![a-z])", lambda m: swap[m.group(1)], s[key])
    slicerio.write_segmentation(str(tmp / "swapped.seg.nrrd"), seg)
    out.append(("swapped sides", f"BAD,{small_case / 'image.nii.gz'},{tmp / 'swapped.seg.nrrd'},PTX,R1", "swapped"))
    out.append(("unreviewed", f"BAD,{small_case / 'image.nii.gz'},{analyzed[0]},PTX,", "not marked as reviewed"))
    return out


def test_bad_cases_are_refused_with_the_case_named_and_nothing_written(cases, analyzed, small_case, tmp_path):
    good = (cases / "cases.csv").read_text(encoding="utf-8").strip().splitlines()[1:]
    for name, row, message in _bad_variants(cases, analyzed, small_case, tmp_path):
        csv = _write_csv(cases / f"bad-{name.replace(' ', '_')}.csv", good[:5] + [row])
        p = run_cli("dataset", "export", csv, "--out", tmp_path / name, "--dataset-id", "502", check_rc=2)
        assert p.stderr.startswith("error: case BAD") and message in p.stderr, (name, p.stderr)
        assert "Traceback" not in p.stderr
        assert not (tmp_path / name).exists() or not any((tmp_path / name).iterdir()), name
    # the correct analyze output exports, and its segmentation gives exactly analyze's label map
    csv = _write_csv(cases / "ok-analyzed.csv", good[:5] + [f"A1,{small_case / 'image.nii.gz'},{analyzed[0]},PTA,R2"])
    run_cli("dataset", "export", csv, "--out", tmp_path / "ok", "--dataset-id", "503", "--quiet", check_rc=0)
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ok" / "Dataset503_LLN" / "labelsTr" / "A1.nii.gz")))
    want = sitk.GetArrayFromImage(sitk.ReadImage(str(analyzed[0] / "labels.nii.gz")))
    assert np.array_equal(got, want)
    # fewer than five cases cannot make five folds
    p = run_cli("dataset", "export", _write_csv(cases / "few.csv", good[:3]), "--out", tmp_path / "few",
                "--dataset-id", "504", check_rc=2)
    assert "at least 5" in p.stderr


def test_pseudonymized_export_names_no_case_and_keeps_the_key_apart(cases, tmp_path):
    run_cli("dataset", "export", cases / "cases.csv", "--out", tmp_path / "raw", "--dataset-id", "505",
            "--pseudonymize", "--quiet", check_rc=0)
    folder = tmp_path / "raw" / "Dataset505_LLN"
    ids = sorted(x.name.split(".")[0] for x in (folder / "labelsTr").iterdir())
    assert len(ids) == 6 and all(i.startswith("LLN") and len(i) == 15 for i in ids)
    text = "".join(x.read_text(encoding="utf-8") for x in folder.glob("*.json"))
    assert not any(f'"P{k}"' in text for k in range(6)) and "source_image" not in text and str(cases) not in text
    key = tmp_path / "raw" / "Dataset505_LLN.pseudonyms.csv"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    rows = dict(line.split(",") for line in key.read_text(encoding="utf-8").splitlines()[1:])
    assert sorted(rows) == ids and sorted(rows.values()) == [f"P{k}" for k in range(6)]


def test_a_case_reviewed_in_the_scene_exports_with_its_reviewer(loaded, cases, small_case, tmp_path):
    from LLNAssistLib import mrml_bridge as B

    scene, vol, res, out = loaded
    assert B.reviewed_by(res.segmentation) is None
    saved = B.save_reviewed_case(scene, vol, res.segmentation, tmp_path / "case", "Dr Ahn")
    assert saved["reviewed_by"] == "Dr Ahn"
    want = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(saved["labels"])), want)
    good = (cases / "cases.csv").read_text(encoding="utf-8").strip().splitlines()[1:]
    csv = _write_csv(cases / "scene.csv", good[:5] + [f"S1,{small_case / 'image.nii.gz'},{saved['mrb']},PTS,"])
    run_cli("dataset", "export", csv, "--out", tmp_path / "raw", "--dataset-id", "506", "--quiet", check_rc=0)
    folder = tmp_path / "raw" / "Dataset506_LLN"
    prov = {e["case"]: e for e in json.loads((folder / "provenance.json").read_text(encoding="utf-8"))["cases"]}
    assert prov["S1"]["reviewed_by"] == "Dr Ahn" and prov["S1"]["labels_kind"] == "mrb"
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "S1.nii.gz"))), want)
    # a segment added after the review, unnamed, is refused rather than guessed
    res.segmentation.GetSegmentation().AddEmptySegment("Segment_1")
    assert B.reviewed_by(res.segmentation) is None
    with pytest.raises(Exception, match="not an LLNAssist label"):
        B.labels_from_segmentation(res.segmentation, vol)
