"""A real PACS (Debian's Orthanc with DICOMweb, on localhost): a phantom study with a decoy T1 series is
stored over STOW-RS; `llnassist analyze --dicomweb URL --study UID --store` pulls it, analyses the T2
and stores SEG and SR back, where QIDO-RS finds them; `batch --dicomweb` runs studies found by a QIDO
query. Wrong credentials, an unknown study and a PACS that stops in the middle of receiving each give
one `error:` line with exit 2, and nothing half-stored."""

from __future__ import annotations

import json
import os

import pydicom
import pytest
import SimpleITK as sitk
from conftest import run_cli
from pacs import PASSWORD, USER, CuttingProxy

from LLNAssistLib import phantom
from LLNAssistLib.dicom_write import SeriesSpec, StudySpec, write_mr_series

T2 = SeriesSpec("T2 TSE AX", 3, echo_time_ms=102, repetition_time_ms=4200)
T1 = SeriesSpec("T1 TSE AX", 4, echo_time_ms=11, repetition_time_ms=620)


@pytest.fixture(scope="module")
def study(orthanc, tmp_path_factory):
    d = tmp_path_factory.mktemp("pacs")
    image = phantom.generate(910430, size=256, slices=24, n_nodes=3).to_sitk()[0]
    spec = StudySpec(patient_name="DOE^JOHN", patient_id="MRN-PACS-1", study_date="20260402", seed="pacs-test")
    t2 = write_mr_series(image, d / "t2", T2, spec)
    write_mr_series(sitk.Cast(sitk.RescaleIntensity(image, 0, 900), sitk.sitkInt16), d / "t1", T1, spec)
    files = sorted((d / "t2").iterdir()) + sorted((d / "t1").iterdir())
    answer = orthanc.client().store_instances([pydicom.dcmread(str(f)) for f in files])
    assert len(answer.ReferencedSOPSequence) == len(files)
    return {"uid": t2["study_uid"], "t2": t2["series_uid"], "dir": d}


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("LLNASSIST_DICOMWEB_USER", USER)
    monkeypatch.setenv("LLNASSIST_DICOMWEB_PASSWORD", PASSWORD)
    monkeypatch.setenv("LLNASSIST_NETRC", os.devnull)


def _error_lines(p):
    return [line for line in p.stderr.splitlines() if line.startswith("error:")]


def test_pull_analyse_and_store_back_into_the_same_study(orthanc, study, creds, tmp_path):
    out = tmp_path / "out"
    p = run_cli("analyze", "--dicomweb", orthanc.url, "--study", study["uid"], "--out", out, "--store",
                "--no-report-images", "--quiet", check_rc=0)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["source"]["series_instance_uid"] == study["t2"]  # the T2, not the decoy T1
    assert summary["source"]["folder"] == f"{orthanc.url} study {study['uid']}"
    seg, sr = summary["dicom"]["seg"]["sop_instance_uid"], summary["dicom"]["sr"]["sop_instance_uid"]
    assert sorted(summary["dicomweb"]["stored"]) == sorted([seg, sr]) and summary["dicomweb"]["failed"] == []
    assert f"stored in study {study['uid']}" in p.stdout
    assert orthanc.series_modalities(study["uid"]).count("SEG") == 1
    found = orthanc.client().search_for_instances(study_instance_uid=study["uid"])
    uids = {i["00080018"]["Value"][0] for i in found}
    assert {seg, sr} <= uids
    stored_seg = orthanc.client().retrieve_instance(study["uid"], summary["dicom"]["seg"]["series_instance_uid"], seg)
    assert stored_seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study["t2"]
    # the SEG and SR now in the study are not taken for images on the next pull
    run_cli("analyze", "--dicomweb", orthanc.url, "--study", study["uid"], "--out", tmp_path / "again",
            "--no-radiomics", "--no-report-images", "--quiet", check_rc=0)


def test_wrong_credentials_and_an_unknown_study_give_one_error_line(orthanc, study, creds, tmp_path, monkeypatch):
    p = run_cli("analyze", "--dicomweb", orthanc.url, "--study", "1.2.3.4", "--out", tmp_path / "a", check_rc=2)
    assert len(_error_lines(p)) == 1 and "study 1.2.3.4 is not on the PACS" in p.stderr
    monkeypatch.setenv("LLNASSIST_DICOMWEB_PASSWORD", "wrong")
    p = run_cli("analyze", "--dicomweb", orthanc.url, "--study", study["uid"], "--out", tmp_path / "b", check_rc=2)
    assert len(_error_lines(p)) == 1 and "refused the credentials (401)" in p.stderr and "Traceback" not in p.stderr
    # from a netrc file instead of the environment
    monkeypatch.delenv("LLNASSIST_DICOMWEB_USER")
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("LLNASSIST_NETRC", str(netrc))
    p = run_cli("analyze", "--dicomweb", orthanc.url, "--study", "1.2.3.4", "--out", tmp_path / "c", check_rc=2)
    assert "not on the PACS" in p.stderr  # authenticated: the study is simply unknown
    p = run_cli("analyze", "--dicomweb", orthanc.url.replace("http://", f"http://{USER}:{PASSWORD}@"), "--study",
                study["uid"], "--out", tmp_path / "d", check_rc=2)
    assert "credentials in the URL are refused" in p.stderr
    assert not any((tmp_path / x).exists() for x in "abcd")


def test_a_pacs_that_stops_mid_transfer_leaves_nothing_half_stored(orthanc, study, creds, tmp_path):
    before = orthanc.client().search_for_instances(study_instance_uid=study["uid"])
    proxy = CuttingProxy(orthanc.port, cut_after=48 * 1024)  # the pull's requests are small; the STOW is not
    try:
        url = f"http://127.0.0.1:{proxy.port}/dicom-web"
        p = run_cli("analyze", "--dicomweb", url, "--study", study["uid"], "--out", tmp_path / "out", "--store",
                    "--no-radiomics", "--no-report-images", "--quiet", check_rc=2)
    finally:
        proxy.close()
    assert proxy.cuts >= 1
    assert len(_error_lines(p)) == 1 and "nothing was stored" in p.stderr
    after = orthanc.client().search_for_instances(study_instance_uid=study["uid"])
    assert len(after) == len(before)
    assert (tmp_path / "out" / "summary.json").is_file()  # the results themselves are kept


def test_batch_runs_the_studies_a_qido_query_finds(orthanc, study, creds, tmp_path):
    p = run_cli("batch", "query:PatientID=MRN-PACS-1", "--dicomweb", orthanc.url, "--out", tmp_path / "b",
                "--no-radiomics", "--no-report-images", "--quiet", check_rc=0)
    rows = (tmp_path / "b" / "cohort.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"{study['uid']},ok"), p.stderr
