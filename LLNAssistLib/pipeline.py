"""analyze(): image -> segmentation -> nodes -> measurements -> radiomics -> one result value, which
writers.py turns into every output (atomically).

Also the file-level entry points behind `llnassist measure` and `llnassist radiomics`.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from . import __version__
from . import conventions as C
from .errors import InputError
from .imageio import check_volume, index_to_ras, read_image, same_geometry, to_axial_canonical

Progress = Callable[..., None]


@dataclass
class AnalysisOptions:
    model: Optional[str] = None
    device: str = "auto"
    post_treatment: bool = False
    sex: Optional[str] = None
    neoadjuvant_radiotherapy: Optional[bool] = None
    series: Optional[str] = None
    radiomics: bool = True
    radiomics_engine: str = "auto"
    key_images: bool = True
    force: bool = False  # analyse past the domain gate; every output is then marked out of domain
    score_file: Optional[str] = None  # a site's refitted radiomics score (llnassist cohort refit)
    reuse_model: bool = False  # keep the loaded model for the next analysis in this process (batch)
    patient_name: bool = False  # name the patient (not only the pseudonymous reference) in the outputs
    dicom_reference: Optional[str] = None  # the DICOM series a volume-file input was made from (SEG/SR reference)
    source_label: Optional[str] = None  # where the input came from when not a user's path (a DICOMweb study)
    pseudonymize: bool = False  # research export: no identifiers in any output (deidentify.py)


def _noop(*_a, **_k):
    return None


def versions() -> dict:
    import monai
    import torch

    out = {"llnassist": __version__, "python": platform.python_version(), "numpy": np.__version__,
           "SimpleITK": sitk.Version_VersionString(), "torch": torch.__version__, "monai": monai.__version__}
    try:
        import radiomics

        out["pyradiomics"] = radiomics.__version__
    except ImportError:
        pass
    return out


def _node_mask_image(canon: sitk.Image, node) -> sitk.Image:
    arr = np.zeros(sitk.GetArrayViewFromImage(canon).shape, np.uint8)
    arr[node.voxels] = 1
    m = sitk.GetImageFromArray(arr)
    m.CopyInformation(canon)
    return m


def run_radiomics(image_canon: sitk.Image, labels_canon: sitk.Image, nodes, opts: AnalysisOptions,
                  progress: Progress = _noop, score_model: Optional[dict] = None) -> str:
    """Fills node.radiomics for every node; returns the engine used."""
    from . import radiomics as R

    engine = "pyradiomics"
    for idx, n in enumerate(nodes):
        mask = _node_mask_image(labels_canon, n)
        res = R.node_radiomics(image_canon, mask, label=1, engine=opts.radiomics_engine, sex=opts.sex,
                               neoadjuvant_radiotherapy=opts.neoadjuvant_radiotherapy, score_model=score_model)
        engine = res["engine"]
        n.radiomics = res
        progress("radiomics", (idx + 1) / len(nodes), f"node {idx + 1}/{len(nodes)}")
    return engine


def _region_side_volume(labels_canon_arr: np.ndarray, canon: sitk.Image, body: np.ndarray) -> np.ndarray:
    """Per voxel: True where the voxel lies left of the mid-sagittal plane (for region segments)."""
    from .nodes import midline_r

    left = np.zeros(labels_canon_arr.shape, bool)
    regions = np.isin(labels_canon_arr, C.REGION_LABELS)
    kk, jj, ii = np.nonzero(regions)
    if len(kk) == 0:
        return left
    r = index_to_ras(canon, np.column_stack([ii, jj, kk]))[:, 0]
    mids = {k: midline_r(body, regions, canon, int(k)) for k in np.unique(kk)}
    left[kk, jj, ii] = r < np.array([mids[k] for k in kk])
    return left


def analyze(image_path, out_dir, opts: Optional[AnalysisOptions] = None, progress: Progress = _noop,
            renderer: Optional[Callable] = None) -> dict:
    """The whole job; every output is published together, or nothing is. Refuses (domain.OutOfDomain)
    what the model cannot read, before and after the model, unless opts.force. `renderer` makes the
    report's key images (keyimages.py: the CLI and batch hand in `best_available`); without one the
    report has none."""
    opts = opts or AnalysisOptions()
    from . import dicom_out, domain, inputs, writers
    from .atomic import check_output_folder
    from .model.inference import load_model, segment
    from .nodes import extract_nodes, patient_status
    from .results import AnalysisResult

    out_dir = Path(out_dir)
    check_output_folder(out_dir, writers.OUTPUT_FILES, inputs=[Path(image_path)])
    score_model = None
    if opts.score_file:
        from .radiomics import load_score_file

        score_model = load_score_file(opts.score_file)  # a bad file is refused before the long work
    timings: dict = {}
    t = time.perf_counter()
    progress("load", 0.0, "reading image")
    inp = inputs.load(image_path, series=opts.series, patient_name=opts.patient_name)
    image = inp.image
    if opts.pseudonymize and opts.patient_name:
        raise InputError("--pseudonymize and --patient-name contradict each other; choose one")
    if opts.source_label:
        inp.source["folder"] = opts.source_label
    if opts.dicom_reference:  # checked before the long work
        if inp.dicom_headers:
            raise InputError("--dicom-reference is for volume files; this input is a DICOM series, which the DICOM "
                             "outputs reference themselves - drop --dicom-reference")
        inp.dicom_headers = dicom_out.reference_headers(opts.dicom_reference, image)
    if opts.pseudonymize:
        from . import deidentify

        inp.source = deidentify.source_record(inp.source, inp.dicom_headers)
        inp.dicom_headers = [deidentify.dataset(h) for h in inp.dicom_headers]
    from .body import body_mask

    # the canonical image and body mask serve the gate, the node measurement and the side of regions
    image_canon = to_axial_canonical(image)
    body = body_mask(sitk.GetArrayViewFromImage(image_canon))
    gate_in = domain.check_input(image, inp.modality, inp.suggestion, canon_body=(image_canon, body))
    if not gate_in.ok and not opts.force:
        domain.refuse(gate_in)
    model = load_model(opts.model, opts.device, reuse=opts.reuse_model)
    timings["load"] = time.perf_counter() - t

    progress("inference", 0.0, f"model {model.manifest['id']} on {model.device.type}")
    seg_t: dict = {}
    seg_stats: dict = {}
    labels = segment(image, model, progress=progress, timings=seg_t, stats=seg_stats)
    timings.update({k: seg_t[k] for k in ("preprocess", "inference", "postprocess")})

    t = time.perf_counter()
    progress("measurement", 0.0, "nodes, regions, axes")
    nodes = extract_nodes(labels, image, post_treatment=opts.post_treatment, body=body)
    labels_canon = to_axial_canonical(labels)
    lab_arr = sitk.GetArrayFromImage(labels_canon)
    left = _region_side_volume(lab_arr, image_canon, body)
    training = model.manifest.get("training_data") or {}
    synthetic = bool(training.get("synthetic", False))
    kind = getattr(model, "kind", "llnassist")
    # the bundled model's confidence limit was calibrated on it; a site model brings its own or none
    max_entropy = (model.manifest.get("domain") or {}).get(
        "max_foreground_entropy", domain.MAX_FOREGROUND_ENTROPY if kind == "llnassist" else None)
    voxel_ml = float(np.prod(image_canon.GetSpacing())) / 1000.0
    gate_out = domain.check_output(domain.compartment_volumes(lab_arr, left, voxel_ml), nodes, seg_stats, synthetic,
                                   max_entropy=max_entropy)
    if not gate_out.ok and not opts.force:
        domain.refuse(gate_out)
    timings["measurement"] = time.perf_counter() - t

    t = time.perf_counter()
    engine = "none"
    if opts.radiomics and nodes:
        engine = run_radiomics(image_canon, labels_canon, nodes, opts, progress, score_model)
    timings["radiomics"] = time.perf_counter() - t

    t = time.perf_counter()
    progress("write", 0.0, "outputs")
    reasons = gate_in.reasons + gate_out.reasons
    summary = {
        "patient_status": patient_status(nodes),
        "n_nodes": len(nodes),
        "n_positive": sum(n.dl_status == "positive" for n in nodes),
        "max_short_axis_mm": round(max((n.short_axis_mm for n in nodes), default=0.0), 2),
        "n_size_positive": sum(n.size_positive for n in nodes),
        "n_criteria_positive": sum(bool(n.criteria.get("criteria_positive")) for n in nodes),
        "post_treatment": opts.post_treatment,
        "source": inp.source,
        "domain": {"validated": not reasons, "forced": bool(opts.force and reasons), "reasons": reasons,
                   "input": gate_in.measures, "output": gate_out.measures},
        "model": {"id": model.manifest["id"], "version": model.manifest["version"], "kind": kind,
                  "sha256": model.manifest["sha256"], "synthetic_training_data": synthetic,
                  "training_data": training.get("description"), "verified": model.manifest.get("verified", True)},
        "device": model.device.type,
        "radiomics_engine": engine,
        "radiomics_score": f"site refit ({Path(opts.score_file).name})" if opts.score_file else
        "Yoo et al., Sci Rep 2025",
        "image": {"size": list(image.GetSize()), "spacing_mm": [round(s, 4) for s in image.GetSpacing()]},
        "versions": versions(),
        "notice": C.SYNTHETIC_MODEL_NOTICE if synthetic else model.manifest.get("notice", ""),
    }
    if reasons:
        summary["domain"]["notice"] = C.OUT_OF_DOMAIN_NOTICE + ": " + "; ".join(reasons)
    if opts.sex is not None and opts.neoadjuvant_radiotherapy is not None:
        summary["clinical"] = {"sex": opts.sex, "neoadjuvant_radiotherapy": opts.neoadjuvant_radiotherapy}
    result = AnalysisResult(image, image_canon, labels, lab_arr, left, nodes, summary, timings, inp)
    return writers.publish(result, out_dir, renderer=renderer if opts.key_images else None, progress=progress,
                           t_write=t)


# --- file-level commands --------------------------------------------------------------------------
def measure_file(path) -> list[dict]:
    from .measure import measure_labelmap

    img = read_image(path, kind="label map")
    arr = sitk.GetArrayViewFromImage(img)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.mod(arr, 1) == 0):
        raise InputError(f"label map {path} has non-integer values; give a label map (integer labels), not an image")
    if not np.any(arr):
        raise InputError(f"label map {path} is empty (all zero); nothing to measure")
    canon = to_axial_canonical(img)
    return measure_labelmap(sitk.GetArrayFromImage(canon).astype(np.int64), canon.GetSpacing())


def radiomics_file(image_path, mask_path, label: Optional[int] = None, engine: str = "auto",
                   sex: Optional[str] = None, neoadjuvant_radiotherapy: Optional[bool] = None) -> dict:
    from . import radiomics as R

    image = read_image(image_path)
    mask = read_image(mask_path, kind="mask")
    if not same_geometry(image, mask):
        raise InputError(f"mask {mask_path} does not match the image geometry (size {mask.GetSize()} vs "
                         f"{image.GetSize()}, or spacing/origin/direction differ); resample the mask onto the image")
    mask = check_volume(mask, str(mask_path), "mask")
    res = R.node_radiomics(image, mask, label=label, engine=engine, sex=sex,
                           neoadjuvant_radiotherapy=neoadjuvant_radiotherapy)
    return {"features": res["features"], "radiomics_score": res["radiomics_score"],
            "radiomics_probability": res["radiomics_probability"], "radiomics_positive": res["radiomics_positive"],
            "engine": res["engine"], **{k: v for k, v in res.items() if k.startswith("clinical_")}}
