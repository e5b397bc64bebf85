"""The seed-002 score recomputed by hand from PyRadiomics' own features and the published numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_cli

pytest.importorskip("radiomics")

# Typed from seed 002 (Radiomics probability score and clinical-radiomics score), not imported.
PUBLISHED = {"intercept": -3.129, "original_glcm_InverseVariance": 17.75, "original_ngtdm_Coarseness": -11.79,
             "original_shape_Elongation": 1.349, "original_glcm_MCC": -1.249,
             "original_gldm_DependenceEntropy": 0.3133,
             "original_gldm_LargeDependenceHighGrayLevelEmphasis": 0.00002075}
CLINICAL = {"intercept": -3.6169, "original_glcm_InverseVariance": 17.57, "original_ngtdm_Coarseness": -14.06,
            "original_shape_Elongation": 1.638, "original_glcm_MCC": -0.8323, "sex_female": 0.4421,
            "original_gldm_DependenceEntropy": 0.3008, "neoadjuvant_radiotherapy": -0.2747,
            "original_gldm_LargeDependenceHighGrayLevelEmphasis": 0.00002171,
            "original_ngtdm_Complexity": 0.0000006628}


def _label_of_first_node(small_phantom):
    return 5 if small_phantom.truth["nodes"][0]["status"] == "positive" else 4


def test_cli_score_equals_published_formula_on_pyradiomics_features(small_case, small_phantom, tmp_path):
    label = _label_of_first_node(small_phantom)
    run_cli("radiomics", small_case / "image.nii.gz", small_case / "labels.nii.gz", "--label", label,
            "--out", tmp_path / "r.json", check_rc=0)
    r = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert r["engine"] == "pyradiomics"
    f = r["features"]
    assert len(f) == 107  # PyRadiomics' full default feature set (original image)
    s = PUBLISHED["intercept"] + sum(c * f[k] for k, c in PUBLISHED.items() if k != "intercept")
    assert r["radiomics_score"] == pytest.approx(s, rel=1e-12, abs=1e-12)
    assert r["radiomics_probability"] == pytest.approx(1 / (1 + math.exp(-s)), rel=1e-12)
    assert r["radiomics_positive"] == (s >= -0.47)


def test_clinical_radiomics_variant(small_case, small_phantom, tmp_path):
    label = _label_of_first_node(small_phantom)
    run_cli("radiomics", small_case / "image.nii.gz", small_case / "labels.nii.gz", "--label", label,
            "--sex", "female", "--neoadjuvant-radiotherapy", "yes", "--out", tmp_path / "r.json", check_rc=0)
    r = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    f = r["features"]
    s = CLINICAL["intercept"] + CLINICAL["sex_female"] + CLINICAL["neoadjuvant_radiotherapy"] + sum(
        c * f[k] for k, c in CLINICAL.items() if k.startswith("original_"))
    assert r["clinical_radiomics_score"] == pytest.approx(s, rel=1e-12)
    assert r["clinical_radiomics_probability"] == pytest.approx(1 / (1 + math.exp(-s)), rel=1e-12)


def test_features_are_pyradiomics_with_the_seed002_settings(small_case, small_phantom):
    """Our extractor configuration equals a plain PyRadiomics run at bin count 128 on the preprocessed node."""
    import radiomics
    from radiomics import featureextractor

    from LLNAssistLib import radiomics as R

    img = sitk.ReadImage(str(small_case / "image.nii.gz"))
    lab = sitk.ReadImage(str(small_case / "labels.nii.gz"))
    label = _label_of_first_node(small_phantom)
    pre_img, pre_mask = R.preprocess(img, lab, label)
    assert pre_img.GetSpacing() == pytest.approx((1.0, 1.0, 1.0))
    a = sitk.GetArrayFromImage(pre_img)
    assert abs(a.mean()) < 1e-4 and a.std() == pytest.approx(1.0, rel=1e-4)
    # the resampled mask keeps the node's volume (partial-volume rounding allowed)
    vol0 = float((sitk.GetArrayFromImage(lab) == label).sum() * np.prod(lab.GetSpacing()))
    vol1 = float(sitk.GetArrayFromImage(pre_mask).sum())
    assert vol1 == pytest.approx(vol0, rel=0.25)

    radiomics.setVerbosity(50)
    ext = featureextractor.RadiomicsFeatureExtractor(binCount=128)
    ext.disableAllFeatures()
    ext.enableFeaturesByName(glcm=["InverseVariance", "MCC"], ngtdm=["Coarseness", "Complexity"],
                             shape=["Elongation"], gldm=["DependenceEntropy", "LargeDependenceHighGrayLevelEmphasis"])
    ref = {k: float(v) for k, v in ext.execute(pre_img, pre_mask, label=1).items() if k.startswith("original_")}
    ours = R.node_radiomics(img, lab, label=label)["features"]
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, rel=1e-9), k


REF = "radiomics/pyradiomics"


@pytest.mark.parametrize("case", ["brain1", "prostate_phantom_subvolume"])
def test_native_features_equal_pyradiomics_on_reference_data(case, reference_dir):
    """PyRadiomics' own test images, bin count 128, label 1: the seven score features agree to 1e-6."""
    import radiomics
    from radiomics import featureextractor

    from LLNAssistLib.radiomics_native import FEATURES, features

    d = reference_dir / REF
    img_name, lab_name = (("brain1_image.nrrd", "brain1_label.nrrd") if case == "brain1" else
                          ("prostate_phantom_subvolume.nrrd", "prostate_phantom_subvolume-label.nrrd"))
    img, lab = sitk.ReadImage(str(d / img_name)), sitk.ReadImage(str(d / lab_name))
    radiomics.setVerbosity(50)
    ext = featureextractor.RadiomicsFeatureExtractor(binCount=128)
    ext.enableAllFeatures()
    ref = {k: float(v) for k, v in ext.execute(img, lab, label=1).items() if k.startswith("original_")}
    ours = features(img, lab, label=1)
    assert set(ours) == set(FEATURES)
    for k in FEATURES:
        assert ours[k] == pytest.approx(ref[k], rel=1e-6), k


def test_native_engine_gives_the_same_score_on_phantom_nodes(small_case, small_phantom, tmp_path):
    for status in {n["status"] for n in small_phantom.truth["nodes"]}:
        label = 5 if status == "positive" else 4
        res = {}
        for engine in ("pyradiomics", "native"):
            run_cli("radiomics", small_case / "image.nii.gz", small_case / "labels.nii.gz", "--label", label,
                    "--engine", engine, "--out", tmp_path / f"{engine}.json", check_rc=0)
            res[engine] = json.loads((tmp_path / f"{engine}.json").read_text(encoding="utf-8"))
        assert res["native"]["engine"] == "native" and len(res["native"]["features"]) == 7
        for k, v in res["native"]["features"].items():
            assert v == pytest.approx(res["pyradiomics"]["features"][k], rel=1e-6), k
        assert res["native"]["radiomics_score"] == pytest.approx(res["pyradiomics"]["radiomics_score"], rel=1e-6)
