"""Radiomics features of a node and the published score of Yoo et al. (Sci Rep 2025).

Preprocessing (Yoo et al., Sci Rep 2025; DESIGN.md): crop around the node (PyRadiomics' cost is mostly whole-volume
work, so the crop keeps it per node), resample to 1 mm isotropic (B-spline image, linear mask then
>= 0.5), N4 bias-field correction (fitted on a 3 mm grid), z-score normalisation within the crop, fixed bin count 128.
Features are PyRadiomics' (names like `original_glcm_InverseVariance`).
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import numpy as np
import SimpleITK as sitk

from . import conventions as C
from .errors import InputError

CROP_MARGIN_MM = 10.0
_N4_ITERATIONS = (20, 20)
_N4_SHRINK = 3


def pyradiomics_available() -> bool:
    try:
        import radiomics  # noqa: F401
    except ImportError:
        return False
    return True


def _crop_box(mask_arr: np.ndarray, spacing: tuple, margin_mm: float):
    kk, jj, ii = np.nonzero(mask_arr)
    m = [int(math.ceil(margin_mm / s)) for s in spacing]  # (i, j, k) margins
    lo = [max(0, ii.min() - m[0]), max(0, jj.min() - m[1]), max(0, kk.min() - m[2])]
    shape = mask_arr.shape[::-1]
    hi = [min(shape[0], ii.max() + 1 + m[0]), min(shape[1], jj.max() + 1 + m[1]), min(shape[2], kk.max() + 1 + m[2])]
    return [int(v) for v in lo], [int(h - low) for h, low in zip(hi, lo)]


def preprocess(image: sitk.Image, mask: sitk.Image, label: Optional[int] = None):
    """(image, binary mask) cropped around the node, 1 mm isotropic, N4-corrected, normalised."""
    m_arr = sitk.GetArrayViewFromImage(mask)
    binary = (m_arr == label) if label is not None else (m_arr != 0)
    if not binary.any():
        what = f"label {label}" if label is not None else "any non-zero label"
        raise InputError(f"the mask has no voxels with {what}; give a mask that covers the node")
    lo, size = _crop_box(binary, image.GetSpacing(), CROP_MARGIN_MM)
    img_c = sitk.RegionOfInterest(sitk.Cast(image, sitk.sitkFloat32), size, lo)
    bin_img = sitk.GetImageFromArray(binary.astype(np.float32))
    bin_img.CopyInformation(mask)
    msk_c = sitk.RegionOfInterest(bin_img, size, lo)

    iso = C.RADIOMICS_RESAMPLED_SPACING_MM
    d = np.array(img_c.GetDirection()).reshape(3, 3)
    extent = np.array(img_c.GetSize()) * np.array(img_c.GetSpacing())
    new_size = [max(1, int(round(e / iso))) for e in extent]
    # Keep the physical centre of the first voxel's corner: origin shifts by half the spacing change.
    shift = (np.full(3, iso) - np.array(img_c.GetSpacing())) / 2
    origin = np.array(img_c.GetOrigin()) + d @ shift
    ref = sitk.Image(new_size, sitk.sitkFloat32)
    ref.SetSpacing((iso, iso, iso))
    ref.SetDirection(img_c.GetDirection())
    ref.SetOrigin(tuple(origin))
    img_r = sitk.Resample(img_c, ref, sitk.Transform(), sitk.sitkBSpline, 0.0)
    msk_r = sitk.Resample(msk_c, ref, sitk.Transform(), sitk.sitkLinear, 0.0) >= 0.5
    if not sitk.GetArrayViewFromImage(msk_r).any():  # node thinner than the new grid: nearest instead
        msk_r = sitk.Resample(msk_c, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0) > 0
    img_r = sitk.Maximum(img_r, 1e-3)  # N4 works on positive intensities (B-spline can undershoot)

    # The bias field is smooth: fit it on a 3x shrunk copy (3 mm grid) and divide it out at full
    # resolution; fitting at 1 mm cost ~4 s per node for the same correction.
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(_N4_ITERATIONS))
    shrink = _N4_SHRINK if min(img_r.GetSize()) >= 4 * _N4_SHRINK else 1
    n4.Execute(sitk.Shrink(img_r, [shrink] * 3))
    img_n = img_r / sitk.Exp(n4.GetLogBiasFieldAsImage(img_r))
    arr = sitk.GetArrayFromImage(img_n).astype(np.float64)
    arr = (arr - arr.mean()) / max(arr.std(), 1e-9)
    out = sitk.GetImageFromArray(arr.astype(np.float32))
    out.CopyInformation(img_n)
    return out, sitk.Cast(msk_r, sitk.sitkUInt8)


def _pyradiomics_features(img: sitk.Image, msk: sitk.Image) -> dict:
    import radiomics
    from radiomics import featureextractor

    radiomics.setVerbosity(logging.ERROR)
    ext = featureextractor.RadiomicsFeatureExtractor(
        binCount=C.RADIOMICS_BIN_COUNT, additionalInfo=False, normalize=False, label=1,
        resampledPixelSpacing=None, minimumROIDimensions=1, minimumROISize=1)
    ext.enableAllFeatures()
    res = ext.execute(img, msk, label=1)
    return {k: float(v) for k, v in res.items() if k.startswith("original_")}


def logistic(x: float) -> float:
    """1 / (1 + e^-x) without overflow for any finite x (math.exp(1000) raises)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def load_score_file(path) -> dict:
    """A site's refitted score (`llnassist cohort refit`): {"intercept", "coefficients": {feature:
    weight}, "cutoff"}; refused with a clear error when malformed."""
    import json

    try:
        data = json.loads(open(path, encoding="utf-8").read())
        data = data.get("score", data)  # the whole `cohort refit` output, or just its score
        model = {"intercept": float(data["intercept"]), "cutoff": float(data.get("cutoff", 0.0)),
                 "coefficients": {str(k): float(v) for k, v in data["coefficients"].items()}}
    except FileNotFoundError:
        raise InputError(f"score file {path} does not exist; check the path") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"score file {path} is not a score (JSON with intercept, coefficients, cutoff); write it "
                         "with `llnassist cohort refit`") from None
    if not model["coefficients"]:
        raise InputError(f"score file {path} has no coefficients; the LASSO kept no feature")
    return model


def score(features: dict, sex: Optional[str] = None, neoadjuvant_radiotherapy: Optional[bool] = None,
          score_model: Optional[dict] = None) -> dict:
    """Radiomics score and probability; the clinical-radiomics variant when sex and nRT are given.
    A feature that is not finite (a degenerate node mask) gives no score rather than NaN or a crash.
    `score_model` (a site's refitted score, load_score_file) replaces the published one."""
    if score_model is not None:
        missing = [k for k in score_model["coefficients"] if k not in features]
        if missing:
            raise InputError(f"the score file needs feature(s) {', '.join(missing)}, which this radiomics engine "
                             "does not compute; use --radiomics-engine pyradiomics")
        if not all(math.isfinite(float(features[k])) for k in score_model["coefficients"]):
            return {"radiomics_score": None, "radiomics_probability": None, "radiomics_positive": None,
                    "radiomics_note": "not computed: a feature of the score is not finite for this node"}
        s = score_model["intercept"] + sum(c * features[k] for k, c in score_model["coefficients"].items())
        return {"radiomics_score": float(s), "radiomics_probability": logistic(s),
                "radiomics_positive": bool(s >= score_model["cutoff"]), "score": "site refit"}
    bad = [k for k in {**C.RADIOMICS_COEFFICIENTS, **C.CLINICAL_RADIOMICS_COEFFICIENTS}
           if not math.isfinite(float(features[k]))]
    if bad:
        return {"radiomics_score": None, "radiomics_probability": None, "radiomics_positive": None,
                "radiomics_note": f"not computed: {', '.join(sorted(bad))} not finite for this node"}
    s = C.RADIOMICS_INTERCEPT + sum(c * features[k] for k, c in C.RADIOMICS_COEFFICIENTS.items())
    out = {"radiomics_score": float(s), "radiomics_probability": logistic(s),
           "radiomics_positive": bool(s >= C.RADIOMICS_CUTOFF)}
    if sex is not None and neoadjuvant_radiotherapy is not None:
        cs = C.CLINICAL_RADIOMICS_INTERCEPT + sum(c * features[k] for k, c in C.CLINICAL_RADIOMICS_COEFFICIENTS.items())
        cs += C.CLINICAL_COEFFICIENTS["sex_female"] * (sex == "female")
        cs += C.CLINICAL_COEFFICIENTS["neoadjuvant_radiotherapy"] * bool(neoadjuvant_radiotherapy)
        out["clinical_radiomics_score"] = float(cs)
        out["clinical_radiomics_probability"] = logistic(cs)
    return out


def node_radiomics(image: sitk.Image, mask: sitk.Image, label: Optional[int] = None, engine: str = "auto",
                   sex: Optional[str] = None, neoadjuvant_radiotherapy: Optional[bool] = None,
                   score_model: Optional[dict] = None) -> dict:
    """Features and scores of one node. `auto` prefers PyRadiomics (all 107 features) when importable,
    else the native implementation (the seven features the scores use); the score is the same."""
    if engine not in ("auto", "pyradiomics", "native"):
        raise InputError(f"unknown radiomics engine {engine!r}; use auto, pyradiomics or native")
    if engine == "pyradiomics" and not pyradiomics_available():
        raise InputError("PyRadiomics is not installed here; run the set-up script, or use --engine native")
    use = "pyradiomics" if engine == "pyradiomics" or (engine == "auto" and pyradiomics_available()) else "native"
    img, msk = preprocess(image, mask, label)
    if use == "pyradiomics":
        feats = _pyradiomics_features(img, msk)
    else:
        from .radiomics_native import features as native_features

        feats = native_features(img, msk, label=1)
    out = {"engine": use, "features": feats}
    out.update(score(feats, sex, neoadjuvant_radiotherapy, score_model))
    return out
