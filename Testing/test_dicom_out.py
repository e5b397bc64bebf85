"""Results as DICOM: SEG and TID 1500 SR from a phantom written as an oblique axial T2 series with a
decoy axial T1 series beside it, checked by Debian's dciodvfy (dicom3tools) and read back with
highdicom against the NIfTI label map and nodes.csv; the SEG loaded into a slicer-core scene; and
--dicom-reference for a volume-file input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_cli

from LLNAssistLib import conventions as C
from LLNAssistLib import dicom_out, phantom
from LLNAssistLib.dicom_write import SeriesSpec, StudySpec, write_mr_series

T2 = SeriesSpec("T2 TSE AX", 3, echo_time_ms=102, repetition_time_ms=4200)
T1 = SeriesSpec("T1 TSE AX", 4, echo_time_ms=11, repetition_time_ms=620)
STUDY = StudySpec(patient_name="DOE^JANE", patient_id="MRN0042137", study_date="20260314")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp("dicomout")
    ph = phantom.generate(910420, size=256, slices=24, n_nodes=4, max_oblique_deg=15)
    image = ph.to_sitk()[0]
    assert abs(np.array(image.GetDirection()).reshape(3, 3)[2, 2]) < 0.9999, "the series must be oblique"
    phantom.write(ph, d / "case")
    t2 = write_mr_series(image, d / "study" / "t2", T2, STUDY)
    decoy = sitk.Cast(sitk.RescaleIntensity(image, 0, 900), sitk.sitkInt16)
    write_mr_series(decoy, d / "study" / "t1", T1, STUDY)
    out = d / "out"
    run_cli("analyze", d / "study", "--out", out, "--device", "cpu", "--no-report-images", "--quiet", check_rc=0)
    return {"dir": d, "out": out, "t2_uid": t2["series_uid"], "image": image}


def _dciodvfy(path) -> list:
    p = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("Error")]


def test_seg_and_sr_are_valid_dicom_by_dciodvfy(study):
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (Debian's dicom3tools) is missing; scripts/test.sh installs it")
    for name in ("segmentation.seg.dcm", "report.sr.dcm"):
        assert _dciodvfy(study["out"] / name) == [], name


def test_seg_pixels_sr_measurements_and_references_agree_with_the_other_outputs(study):
    import highdicom as hd
    import pydicom
    from highdicom.sr import MeasurementReport

    out = study["out"]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["source"]["series_instance_uid"] == study["t2_uid"]  # the T2, not the decoy T1
    labels_img = sitk.ReadImage(str(out / "labels.nii.gz"))
    labels = sitk.GetArrayFromImage(labels_img)
    with open(out / "nodes.csv", newline="", encoding="utf-8") as f:
        rows = {r["node_id"]: r for r in csv.DictReader(f)}
    assert rows, "the phantom's nodes must be found"

    segs = dicom_out.read_seg(out / "segmentation.seg.dcm", labels_img)
    nodes = [s for s in segs if s["kind"] == "node"]
    assert sorted(s["node_id"] for s in nodes) == sorted(rows)
    for value in C.REGION_LABELS:  # each compartment = its two sided segments
        name = C.REGION_NAME[C.REGION_CODE[value]]
        union = np.zeros(labels.shape, bool)
        for s in segs:
            if s["kind"] == "region" and s["label"].startswith(name):
                assert not (union & s["mask"]).any()
                union |= s["mask"]
        assert np.array_equal(union, labels == value), name
    for status, value in (("positive", C.NODE_POSITIVE), ("negative", C.NODE_NEGATIVE)):
        union = np.zeros(labels.shape, bool)
        for s in nodes:
            if s["status"] == status:
                union |= s["mask"]
                assert rows[s["node_id"]]["dl_status"] == status
        assert np.array_equal(union, labels == value), status

    seg = pydicom.dcmread(str(out / "segmentation.seg.dcm"))
    source = {str(pydicom.dcmread(str(p), stop_before_pixels=True).SOPInstanceUID)
              for p in (study["dir"] / "study" / "t2").iterdir()}
    assert seg.StudyInstanceUID == summary["source"]["study_instance_uid"]
    refd = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
            for i in s.ReferencedInstanceSequence}
    assert refd and refd <= source
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study["t2_uid"]
    assert len(seg.PerFrameFunctionalGroupsSequence) < len(segs) * len(source)  # empty frames left out

    sr = hd.sr.srread(str(out / "report.sr.dcm"))
    evidence = {str(i.ReferencedSOPInstanceUID) for e in sr.CurrentRequestedProcedureEvidenceSequence
                for s in e.ReferencedSeriesSequence for i in s.ReferencedSOPSequence}
    assert source | {str(seg.SOPInstanceUID)} <= evidence
    report = MeasurementReport.from_sequence([sr])
    groups = report.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(rows)
    numbers = {s["number"]: s for s in segs}
    for g in groups:
        node_id = g.tracking_identifier.split(" ", 1)[1]
        ref = g.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert numbers[ref.referenced_segment_numbers[0]]["node_id"] == node_id
        m = {x.name.value: x for x in g.get_measurements()}
        assert m[C.SHORT_AXIS_CODE.value].value == float(rows[node_id]["short_axis_mm"])
        assert m[C.LONG_AXIS_CODE.value].value == float(rows[node_id]["long_axis_mm"])
        assert m[C.VOLUME_CODE.value].value == float(rows[node_id]["volume_mm3"])
        assert m[C.SHORT_AXIS_CODE.value].unit.value == "mm"
        q = {x.name.value: x.value.value for x in g.get_qualitative_evaluations()}
        assert q[C.SR_MODEL_STATUS.value] == C.STATUS_CODE[rows[node_id]["dl_status"]].value
        size_met = rows[node_id]["size_positive"] == "True"
        assert q[C.SR_SIZE_CRITERION.value] == (C.YES if size_met else C.NO).value
        assert g.finding_sites[0].value.value == C.REGION_SITE_CODE[rows[node_id]["region"]].value
        assert g.finding_sites[0].laterality.value == C.LATERALITY_CODE[rows[node_id]["side"]].value
        assert g.finding_type.value == C.LYMPH_NODE.value  # (a CodedConcept)


def test_the_seg_loads_into_a_slicer_scene_with_the_same_segments(study):
    pytest.importorskip("slicer")
    from LLNAssistLib import mrml_bridge

    scene = mrml_bridge.new_scene()
    vol = mrml_bridge.load_volume(scene, study["dir"] / "case" / "image.nii.gz")
    seg_node = mrml_bridge.load_dicom_seg(scene, study["out"] / "segmentation.seg.dcm", vol)
    ref = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    ref_res = mrml_bridge.load_results(scene, study["out"], vol)
    sg, rg = seg_node.GetSegmentation(), ref_res.segmentation.GetSegmentation()
    names = sorted(sg.GetNthSegment(i).GetName() for i in range(sg.GetNumberOfSegments()))
    assert names == sorted(rg.GetNthSegment(i).GetName() for i in range(rg.GetNumberOfSegments()))
    for i in range(sg.GetNumberOfSegments()):
        sid = sg.GetNthSegmentID(i)
        rid = rg.GetSegmentIdBySegmentName(sg.GetNthSegment(i).GetName())
        assert np.array_equal(mrml_bridge.segment_mask(seg_node, sid, vol),
                              mrml_bridge.segment_mask(ref_res.segmentation, rid, vol))
    scene.RemoveNode(ref)


def test_a_volume_file_gets_dicom_outputs_only_with_its_series_given(study, tmp_path):
    case = study["dir"] / "case"
    p = run_cli("analyze", case / "image.nii.gz", "--out", tmp_path / "plain", "--no-radiomics", "--no-report-images",
                check_rc=0)
    assert "no DICOM SEG/SR: the input is not a DICOM series; give --dicom-reference" in p.stdout
    assert not (tmp_path / "plain" / "segmentation.seg.dcm").exists()
    run_cli("analyze", case / "image.nii.gz", "--out", tmp_path / "ref", "--no-radiomics", "--no-report-images",
            "--dicom-reference", study["dir"] / "study" / "t2", "--quiet", check_rc=0)
    seg = dicom_out.read_seg(tmp_path / "ref" / "segmentation.seg.dcm", sitk.ReadImage(str(case / "image.nii.gz")))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ref" / "labels.nii.gz")))
    union = np.zeros(labels.shape, bool)
    for s in seg:
        union |= s["mask"]
    assert np.array_equal(union, labels > 0)
    # a series with another grid (the decoy T1 is the same grid; another phantom is not) is refused
    other = phantom.generate(910421, size=200, slices=20, n_nodes=1).to_sitk()[0]
    write_mr_series(other, tmp_path / "other", T2, STUDY)
    p = run_cli("analyze", case / "image.nii.gz", "--out", tmp_path / "bad", "--dicom-reference", tmp_path / "other",
                check_rc=2)
    assert "error: --dicom-reference" in p.stderr and "grid" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "bad").exists()


def test_a_corrected_result_exports_as_seg_and_sr_with_the_reader_as_observer(study, tmp_path):
    pytest.importorskip("slicer")
    import highdicom as hd
    from highdicom.sr import MeasurementReport
    from scipy import ndimage

    from LLNAssistLib import mrml_bridge

    scene = mrml_bridge.new_scene()
    vol = mrml_bridge.load_volume(scene, study["dir"] / "case" / "image.nii.gz")
    res = mrml_bridge.load_results(scene, study["out"], vol)
    seg_node = res.segmentation
    rows = mrml_bridge.table_rows(res.table)
    flipped, edited = rows[0], rows[-1]
    new_status = "negative" if flipped["dl_status"] == "positive" else "positive"
    mrml_bridge.set_status(scene, vol, seg_node, int(flipped["node_id"]), new_status, radiomics=False)
    sid = next(s for s in mrml_bridge.node_segment_ids(seg_node)
               if mrml_bridge._tag(seg_node.GetSegmentation().GetSegment(s), C.TAG_NODE_ID) == str(edited["node_id"]))
    grown = ndimage.binary_dilation(mrml_bridge.segment_mask(seg_node, sid, vol))  # the reader's edit
    mrml_bridge.set_segment_mask(seg_node, sid, grown, vol)
    mrml_bridge.recompute(scene, vol, seg_node, radiomics=False)

    files = sorted((study["dir"] / "study" / "t2").iterdir())[::-1]  # any order
    info = mrml_bridge.export_dicom(scene, vol, seg_node, files, tmp_path / "export", "R7", radiomics=False)
    for name in ("segmentation.seg.dcm", "report.sr.dcm"):
        assert _dciodvfy(tmp_path / "export" / name) == [], name
    seg = hd.seg.segread(str(tmp_path / "export" / "segmentation.seg.dcm"))
    assert seg.ContentCreatorName.family_name == "R7"
    algo = {d.TrackingID: d.SegmentAlgorithmType for d in seg.SegmentSequence if "TrackingID" in d}
    assert algo[f"node {edited['node_id']}"] == "SEMIAUTOMATIC"
    assert algo[f"node {flipped['node_id']}"] == ("AUTOMATIC" if flipped["node_id"] != edited["node_id"]
                                                   else "SEMIAUTOMATIC")
    sr = hd.sr.srread(str(tmp_path / "export" / "report.sr.dcm"))
    report = MeasurementReport.from_sequence([sr])
    observer = report.get_observer_contexts()[0]
    assert observer.observer_identifying_attributes.name.family_name == "R7"
    status = {g.tracking_identifier: {q.name.value: q.value.value for q in g.get_qualitative_evaluations()}
              for g in report.get_volumetric_roi_measurement_groups()}
    assert status[f"node {flipped['node_id']}"][C.SR_MODEL_STATUS.value] == C.STATUS_CODE[new_status].value
    assert info["seg"]["segments"] == seg_node.GetSegmentation().GetNumberOfSegments()
    # a volume from another series is refused, nothing written
    with pytest.raises(Exception, match="not the volume's grid"):
        mrml_bridge.export_dicom(scene, vol, seg_node, files[:-1], tmp_path / "bad", "R7", radiomics=False)
    assert not (tmp_path / "bad" / "segmentation.seg.dcm").exists()


def _strings(ds) -> list:
    out = []
    for elem in ds.iterall():
        if elem.VR in ("PN", "LO", "SH", "DA", "DT", "UI", "LT", "ST", "UT", "CS", "AS"):
            out.append(str(elem.value))
    return out


def test_pseudonymize_leaves_no_identifier_and_matches_the_deidentified_images(study, tmp_path, monkeypatch):
    import re

    import pydicom

    monkeypatch.setenv("LLNASSIST_PSEUDONYM_KEY", str(tmp_path / "site.key"))
    src = study["dir"] / "study"
    identifiers = ["DOE^JANE", "MRN0042137", "20260314", "2026-03-14", str(src), study["t2_uid"]]
    for run in ("a", "b"):
        run_cli("analyze", src, "--out", tmp_path / run, "--pseudonymize", "--no-radiomics", "--quiet", check_rc=0)
    out = tmp_path / "a"
    for name in ("summary.json", "nodes.csv", "nodes.json", "report.html"):
        text = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", (out / name).read_text(encoding="utf-8"))
        assert not [i for i in identifiers if i in text], name
    seg = pydicom.dcmread(str(out / "segmentation.seg.dcm"))
    sr = pydicom.dcmread(str(out / "report.sr.dcm"))
    for ds in (seg, sr):
        assert not [s for s in _strings(ds) for i in identifiers if i in s]
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientID.startswith("LLN-")
        assert _dciodvfy(out / ("segmentation.seg.dcm" if ds is seg else "report.sr.dcm")) == []
    assert seg.PatientID == sr.PatientID and seg.StudyDate == sr.StudyDate != "20260314"
    assert seg.StudyInstanceUID == sr.StudyInstanceUID
    # the same key gives the same pseudonym, date and UIDs on another run
    again = pydicom.dcmread(str(tmp_path / "b" / "segmentation.seg.dcm"))
    assert (again.PatientID, again.StudyDate, again.StudyInstanceUID) == (seg.PatientID, seg.StudyDate,
                                                                         seg.StudyInstanceUID)
    # the de-identified images are the ones the pseudonymised SEG references
    run_cli("deidentify", src, "--out", tmp_path / "images", check_rc=0)
    images = [pydicom.dcmread(str(p)) for p in sorted((tmp_path / "images").iterdir())]
    assert len(images) == 24 and {i.PatientID for i in images} == {seg.PatientID}
    assert not [s for i in images[:2] for s in _strings(i) for x in identifiers if x in s]
    refd = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert refd <= {str(i.SOPInstanceUID) for i in images}
    assert {str(i.StudyInstanceUID) for i in images} == {str(seg.StudyInstanceUID)}
    p = run_cli("analyze", src, "--out", tmp_path / "c", "--pseudonymize", "--patient-name", check_rc=2)
    assert "contradict" in p.stderr
