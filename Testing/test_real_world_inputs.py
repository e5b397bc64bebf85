"""What a hospital actually has: DICOM protocol folders (the right series by what the headers
mean), inputs the model cannot read (refused, or marked with --force), output folders that hold
the user's own files, numeric extremes, library warnings kept off the terminal."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO, UNSEEN_SEED, run_cli

from LLNAssistLib import dicomseries, domain, foreign_inputs, phantom
from LLNAssistLib.dicom_write import SeriesSpec, StudySpec, write_mr_series
from LLNAssistLib.errors import InputError

T2_AX = SeriesSpec("T2 TSE AX", 3, echo_time_ms=102, repetition_time_ms=4200)
T1_TSE_AX = SeriesSpec("T1 TSE AX", 4, echo_time_ms=11, repetition_time_ms=620)
T2_SAG = SeriesSpec("T2 TSE SAG", 2, echo_time_ms=98, repetition_time_ms=3800)
T1_VIBE_POST = SeriesSpec("AX T1 VIBE post-contrast", 7, echo_time_ms=2.4, repetition_time_ms=4.9,
                          scanning_sequence="GR", sequence_variant="SP", contrast_agent="Gadobutrol 7.5 ml")
DWI = SeriesSpec("ep2d_diff_tra b50 b800", 5, echo_time_ms=68, repetition_time_ms=5200, diffusion_b_value=800,
                 scanning_sequence="EP")
ADC = SeriesSpec("ep2d_diff_tra_ADC", 6, echo_time_ms=68, repetition_time_ms=5200,
                 image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC"), scanning_sequence="EP")
STUDY = StudySpec(patient_name="DOE^JANE", patient_id="MRN0042137", study_date="20260314")


@pytest.fixture(scope="module")
def images(small_phantom):
    t2 = small_phantom.to_sitk()[0]
    other = phantom.generate(UNSEEN_SEED + 1, size=256, slices=24, n_nodes=6).to_sitk()[0]
    return {"t2": t2, "other": other, "sagittal": foreign_inputs.acquired_as(t2, "sagittal", 0.9, 3.6)}


def _folder(root, series: list) -> dict:
    return {spec.description: write_mr_series(img, root / f"s{spec.number}", spec, STUDY)["series_uid"]
            for spec, img in series}


def test_axial_t2_is_chosen_over_axial_t1_tse_and_sagittal_t2_and_named_in_the_outputs(tmp_path, images, analyzed):
    uids = _folder(tmp_path / "study", [(T2_SAG, images["sagittal"]), (T2_AX, images["t2"]),
                                        (T1_TSE_AX, images["other"])])
    out = tmp_path / "out"
    p = run_cli("analyze", tmp_path / "study", "--out", out, "--device", "cpu", check_rc=0)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    src = summary["source"]
    assert src["series_instance_uid"] == uids["T2 TSE AX"] and src["series_number"] == 3
    assert src["description"] == "T2 TSE AX" and src["study_date"] == "2026-03-14"
    assert src["selected_by"] == "the only axial T2-weighted series"
    not_used = {o["description"]: o["not_used_because"] for o in src["other_series"]}
    assert "T1-weighted" in not_used["T1 TSE AX"] and "sagittal" in not_used["T2 TSE SAG"]
    # the same pixels as the NIfTI case: the same result
    ref = json.loads((analyzed[0] / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_nodes"] == ref["n_nodes"] and summary["patient_status"] == ref["patient_status"]
    assert abs(summary["max_short_axis_mm"] - ref["max_short_axis_mm"]) < 0.05
    # a pseudonymous reference, never the name or hospital number unless asked
    report = (out / "report.html").read_text(encoding="utf-8")
    assert src["patient_reference"].startswith("LLN-") and src["patient_reference"] in report
    for ident in ("DOE^JANE", "MRN0042137"):
        assert ident not in (out / "summary.json").read_text(encoding="utf-8") and ident not in report
        assert ident not in p.stdout + p.stderr
    first_node = json.loads((out / "nodes.json").read_text(encoding="utf-8"))[0]
    assert "T2 TSE AX" in report and "image " in first_node["key_image"]


def test_contrast_enhanced_t1_diffusion_and_adc_are_not_taken_for_t2(tmp_path, images):
    # DWI has a T2-like TE/TR: the b-value and the image type decide, not the timing
    _folder(tmp_path, [(T1_VIBE_POST, images["other"]), (DWI, images["other"]), (ADC, images["other"]),
                       (T2_AX, images["t2"])])
    found = dicomseries.scan(tmp_path)
    sel = dicomseries.choose(found, where="study")
    assert sel.series.description == "T2 TSE AX"
    why = {s.description: s.rejected for s in found}
    assert "contrast-enhanced" in why["AX T1 VIBE post-contrast"] and "T1-weighted" in why["AX T1 VIBE post-contrast"]
    assert "diffusion-weighted or ADC" in why["ep2d_diff_tra b50 b800"]
    assert "diffusion-weighted or ADC" in why["ep2d_diff_tra_ADC"]
    assert "derived or reformatted images" in why["ep2d_diff_tra_ADC"]


def test_high_resolution_small_fov_t2_is_preferred_over_a_large_fov_one(tmp_path, images):
    t2 = images["t2"]
    big = sitk.Resample(t2, [180, 180, t2.GetSize()[2]], sitk.Transform(), sitk.sitkLinear, t2.GetOrigin(),
                        [1.4, 1.4, t2.GetSpacing()[2]], t2.GetDirection())
    centre = t2.TransformContinuousIndexToPhysicalPoint([s / 2 for s in t2.GetSize()])
    d = np.array(t2.GetDirection()).reshape(3, 3)
    small_origin = np.array(centre) - d @ np.array([160 * 0.56, 160 * 0.56, t2.GetSize()[2] / 2 * t2.GetSpacing()[2]])
    small = sitk.Resample(t2, [320, 320, t2.GetSize()[2]], sitk.Transform(), sitk.sitkLinear, small_origin.tolist(),
                          [0.56, 0.56, t2.GetSpacing()[2]], t2.GetDirection())
    uids = _folder(tmp_path, [(SeriesSpec("T2 AX large FOV", 3), big), (SeriesSpec("T2 AX small FOV", 8), small)])
    sel = dicomseries.choose(dicomseries.scan(tmp_path), where="study")
    assert sel.series.uid == uids["T2 AX small FOV"]
    assert sel.rule.startswith("high-resolution small-FOV axial T2 (0.56 mm pixels, 179 mm field of view) "
                               "preferred over series 3 'T2 AX large FOV' (1.40 mm, 252 mm)")
    # --series still overrides, by number, description or UID
    assert dicomseries.choose(dicomseries.scan(tmp_path), "3", "study").series.uid == uids["T2 AX large FOV"]


def test_zip_and_dicomdir_of_a_study_give_the_same_choice(tmp_path, images):
    from pydicom.fileset import FileSet

    uids = _folder(tmp_path / "study", [(T2_SAG, images["sagittal"]), (T2_AX, images["t2"])])
    with zipfile.ZipFile(tmp_path / "study.zip", "w") as z:
        for f in sorted((tmp_path / "study").rglob("*.dcm")):
            z.write(f, f.relative_to(tmp_path))
    assert dicomseries.open_series(tmp_path / "study.zip")[0].series.uid == uids["T2 TSE AX"]
    fs = FileSet()
    for f in sorted((tmp_path / "study").rglob("*.dcm")):
        fs.add(str(f))
    fs.write(str(tmp_path / "media"))
    sel, _all, image = dicomseries.open_series(tmp_path / "media" / "DICOMDIR")
    assert sel.series.uid == uids["T2 TSE AX"]
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(images["t2"]))


def test_a_zip_member_outside_its_folder_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("../outside.dcm", b"x")
    with pytest.raises(InputError, match="outside its own folder"):
        dicomseries.open_series(tmp_path / "evil.zip")
    assert not (tmp_path.parent / "outside.dcm").exists()


def test_no_acceptable_series_exits_2_naming_what_was_found(tmp_path, images):
    _folder(tmp_path / "study", [(T2_SAG, images["sagittal"]), (T1_VIBE_POST, images["other"])])
    p = run_cli("analyze", tmp_path / "study", "--out", tmp_path / "out", "--device", "cpu", check_rc=2)
    err = [x for x in p.stderr.strip().splitlines() if not x.startswith("[llnassist]")]
    assert len(err) == 1 and err[0].startswith("error: no axial T2-weighted series")
    assert "series 2 'T2 TSE SAG': sagittal" in err[0] and "contrast-enhanced" in err[0]
    assert not (tmp_path / "out").exists()


# --- the domain gate ------------------------------------------------------------------------------------------
def test_unseen_phantoms_pass_the_input_check():
    for seed in range(910200, 910210):
        g = domain.check_input(phantom.generate(seed).to_sitk()[0])
        assert g.ok, (seed, g.reasons)


def _refused(image, tmp_path, name):
    from LLNAssistLib.pipeline import AnalysisOptions, analyze

    path = tmp_path / f"{name}.nrrd"
    sitk.WriteImage(image, str(path))
    with pytest.raises(domain.OutOfDomain) as exc:
        analyze(path, tmp_path / f"out-{name}", AnalysisOptions(device="cpu"))
    assert not (tmp_path / f"out-{name}").exists()
    return exc.value


def test_blank_constant_ct_sagittal_coronal_and_brain_are_refused_before_the_model(tmp_path, images):
    t2 = images["t2"]
    brain = sitk.ReadImage(str(REPO.parent / "shared" / "reference-data" / "radiomics" / "pyradiomics" /
                               "brain1_image.nrrd"))
    cases = {"blank": (foreign_inputs.filled(t2, 0), "blank"),
             "constant": (foreign_inputs.filled(t2, 250), "every voxel has the value 250"),
             "ct": (foreign_inputs.ct_like(t2), "CT Hounsfield"),
             "sagittal": (foreign_inputs.acquired_as(t2, "sagittal"), "a sagittal acquisition"),
             "coronal": (foreign_inputs.acquired_as(t2, "coronal"), "a coronal acquisition"),
             "brain": (brain, "looks like a head")}
    for name, (img, words) in cases.items():
        err = _refused(img, tmp_path, name)
        assert err.stage == "input", name  # refused before the model was even loaded
        assert words in str(err), (name, str(err))
        assert "\n" not in str(err)


def test_a_sagittal_series_in_a_folder_is_refused_with_the_axial_series_suggested(tmp_path, images):
    uids = _folder(tmp_path / "study", [(T2_SAG, images["sagittal"]), (T2_AX, images["t2"])])
    p = run_cli("analyze", tmp_path / "study", "--series", uids["T2 TSE SAG"], "--out", tmp_path / "o",
                "--device", "cpu", check_rc=2)
    assert "a sagittal acquisition" in p.stderr and uids["T2 TSE AX"] in p.stderr


def test_the_cli_refuses_a_brain_in_one_line_with_exit_2(tmp_path):
    brain = REPO.parent / "shared" / "reference-data" / "radiomics" / "pyradiomics" / "brain1_image.nrrd"
    p = run_cli("analyze", brain, "--out", tmp_path / "o", "--device", "cpu", check_rc=2)
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("error: not an image the model can read") and "--force" in lines[-1]
    assert all(x.startswith("[llnassist]") for x in lines[:-1]) and not (tmp_path / "o").exists()


def test_output_check_refuses_implausible_anatomy_and_names_the_synthetic_model():
    vols = {(r, s): 50.0 for r in (1, 2, 3) for s in ("left", "right")}
    vols[(2, "left")] = 0.0
    g = domain.check_output(vols, [], {"foreground_entropy": 0.5}, synthetic_model=True)
    assert not g.ok and "no obturator compartment (left)" in g.reasons[0]
    assert any("unsure" in r for r in g.reasons)
    assert domain.REAL_SCAN_HINT in g.message("x")
    ok = domain.check_output({k: 50.0 for k in vols}, [], {"foreground_entropy": 0.02}, synthetic_model=True)
    assert ok.ok


def test_force_runs_and_marks_every_output_out_of_domain(tmp_path, images):
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(foreign_inputs.ct_like(images["t2"]), str(path))
    out = tmp_path / "out"
    p = run_cli("analyze", path, "--out", out, "--device", "cpu", "--force", "--no-report-images", check_rc=0)
    assert "warning: OUTSIDE THE MODEL'S VALIDATED DOMAIN" in p.stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["domain"]["validated"] is False and summary["domain"]["forced"] is True
    assert any("CT Hounsfield" in r for r in summary["domain"]["reasons"])
    assert (out / "nodes.csv").read_text(encoding="utf-8").startswith("# OUTSIDE THE MODEL'S VALIDATED DOMAIN")
    assert "id='out-of-domain'" in (out / "report.html").read_text(encoding="utf-8")
    import slicerio

    seg = slicerio.read_segmentation(str(out / "segmentation.seg.nrrd"), skip_voxels=True)
    assert seg["segments"] and all("OUTSIDE" in s["tags"]["LLNAssist.OutsideValidatedDomain"]
                                   for s in seg["segments"])
    # in Slicer: the segmentation says so, and the module offers --force only for the gate's refusals
    from LLNAssistLib import mrml_bridge as B
    from LLNAssistLib import runner

    scene = B.new_scene()
    res = B.load_results(scene, out, B.load_volume(scene, path))
    assert "OUTSIDE" in res.segmentation.GetAttribute(B.ATTR_OUT_OF_DOMAIN)
    refusal = run_cli("analyze", path, "--out", tmp_path / "o2", "--device", "cpu", check_rc=2).stderr.splitlines()[-1]
    assert runner.refused_by_domain_gate(refusal)
    assert not runner.refused_by_domain_gate("error: image x does not exist; check the path")
    assert "--force" in runner.analyze_command("x", "y", force=True)


# --- outputs never destroy what the user made ------------------------------------------------------------------
def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_case_folders_own_files_survive_out_case(tmp_path, small_phantom):
    case = tmp_path / "CASE"
    phantom.write(small_phantom, case)
    (case / "notes.txt").write_text("reviewed by Dr A")
    before = _digest(case)
    p = run_cli("analyze", case / "image.nii.gz", "--out", case, "--device", "cpu", check_rc=2)
    assert "inside the output folder" in p.stderr
    sitk.WriteImage(sitk.ReadImage(str(case / "image.nii.gz")), str(tmp_path / "elsewhere.nii.gz"))
    p = run_cli("analyze", tmp_path / "elsewhere.nii.gz", "--out", case, "--device", "cpu", check_rc=2)
    assert "holds files LLNAssist did not write" in p.stderr and "labels.nii.gz" in p.stderr
    assert _digest(case) == before


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path, small_case):
    import signal
    import time

    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "LLNAssistLib.cli", "analyze", str(small_case / "image.nii.gz"),
                             "--out", str(out), "--device", "cpu"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not list(tmp_path.glob(".out.partial-*")) and time.time() - t0 < 300 and proc.poll() is None:
        time.sleep(0.01)
    assert list(tmp_path.glob(".out.partial-*")), "the run ended before it staged its output"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".out.partial-*")) and not out.exists()
    run_cli("analyze", small_case / "image.nii.gz", "--out", out, "--device", "cpu", "--no-radiomics",
            "--no-report-images", check_rc=0)
    assert not list(tmp_path.glob(".out.partial-*")) and (out / "summary.json").is_file()


# --- numbers stay finite -------------------------------------------------------------------------------------
def test_scores_stay_finite_for_extreme_and_degenerate_features():
    from LLNAssistLib import conventions as C
    from LLNAssistLib import radiomics as R

    assert R.logistic(-1000.0) == 0.0 and R.logistic(1000.0) == 1.0 and R.logistic(0.0) == 0.5
    assert math.isclose(R.logistic(-40.0), math.exp(-40.0) / (1 + math.exp(-40.0)), rel_tol=1e-12)
    feats = {k: 0.0 for k in {**C.RADIOMICS_COEFFICIENTS, **C.CLINICAL_RADIOMICS_COEFFICIENTS}}
    feats["InverseVariance" if "InverseVariance" in feats else next(iter(feats))] = -1e4  # a score of about -1e5
    out = R.score(feats, sex="female", neoadjuvant_radiotherapy=True)
    assert all(math.isfinite(out[k]) for k in ("radiomics_score", "radiomics_probability",
                                               "clinical_radiomics_probability"))
    feats[next(iter(feats))] = float("nan")
    out = R.score(feats)
    assert out["radiomics_probability"] is None and "not finite" in out["radiomics_note"]


# --- library warnings go to the log ----------------------------------------------------------------------------
_NOISY = r"""
import os, sys, warnings
from LLNAssistLib import cli
def noisy(args):
    warnings.warn("overflow encountered in exp", RuntimeWarning)
    os.write(2, b"WARNING: In itkNiftiImageIO.cxx: unexpected scales in sform\n")
    sys.stderr.write("[llnassist] 100.0% done: x\n")
    return 0
cli.cmd_measure = noisy
sys.exit(cli.main(["measure", "x.nii.gz"]))
"""


def test_library_warnings_go_to_the_log_not_the_terminal(tmp_path):
    log = tmp_path / "llnassist.log"
    p = subprocess.run([sys.executable, "-c", _NOISY], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, LLNASSIST_LOG=str(log)), timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "[llnassist] 100.0% done: x"
    text = log.read_text(encoding="utf-8")
    assert "overflow encountered in exp" in text and "unexpected scales in sform" in text
