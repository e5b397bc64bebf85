"""analyze(): image -> segmentation -> nodes -> measurements -> radiomics -> outputs (atomically).

Also the file-level entry points behind `llnassist measure` and `llnassist radiomics`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from . import __version__
from . import conventions as C
from .atomic import staged_directory
from .errors import InputError
from .imageio import check_volume, from_canonical, index_to_ras, read_image, same_geometry, to_axial_canonical

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


def analyze(image_path, out_dir, opts: Optional[AnalysisOptions] = None, progress: Progress = _noop) -> dict:
    """The whole job; every output is published together, or nothing is. Refuses (domain.OutOfDomain)
    what the model cannot read, before and after the model, unless opts.force."""
    opts = opts or AnalysisOptions()
    from . import domain, inputs
    from .atomic import check_output_folder
    from .model.inference import load_model, segment
    from .nodes import extract_nodes, patient_status

    out_dir = Path(out_dir)
    check_output_folder(out_dir, OUTPUT_FILES, inputs=[Path(image_path)])
    score_model = None
    if opts.score_file:
        from .radiomics import load_score_file

        score_model = load_score_file(opts.score_file)  # a bad file is refused before the long work
    timings: dict = {}
    t = time.perf_counter()
    progress("load", 0.0, "reading image")
    inp = inputs.load(image_path, series=opts.series, patient_name=opts.patient_name)
    image = inp.image
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
    _write_outputs(out_dir, image, image_canon, labels, lab_arr, nodes, summary, timings, opts, t,
                   progress, left, inp)
    return summary


# Every file `analyze` writes: an output folder may hold these and nothing else (atomic.check_output_folder).
OUTPUT_FILES = ("labels.nii.gz", "nodes.csv", "nodes.json", "segmentation.seg.nrrd", "report.html", "summary.json")


def nodes_csv(nodes, domain_notice: str = "") -> str:
    """The node table; a result forced past the domain gate starts with a '#' line saying so."""
    buf = io.StringIO()
    if domain_notice:
        buf.write("# " + domain_notice.replace("\n", " ") + "\n")
    w = csv.DictWriter(buf, fieldnames=list(C.NODES_CSV_COLUMNS), lineterminator="\n")
    w.writeheader()
    for n in nodes:
        w.writerow(n.row())
    return buf.getvalue()


def node_details(n, canon: sitk.Image) -> dict:
    d = n.row()
    d.update({
        "criteria": n.criteria, "border_irregularity": n.border_irregularity,
        "signal_heterogeneity": n.signal_heterogeneity, "positive_voxel_fraction": n.positive_fraction,
        "long_axis_ras": index_to_ras(canon, n.axes.long_ends_ijk).round(3).tolist(),
        "short_axis_ras": index_to_ras(canon, n.axes.short_ends_ijk).round(3).tolist(),
        "radiomics_features": n.radiomics.get("features", {}),
    })
    for k in ("clinical_radiomics_score", "clinical_radiomics_probability", "radiomics_positive"):
        if k in n.radiomics:
            d[k] = n.radiomics[k]
    d["key_slice_ras_s"] = round(float(np.mean(np.array(d["long_axis_ras"])[:, 2])), 3)
    return d


def slice_names(nodes, image: sitk.Image, image_canon: sitk.Image, inp) -> dict:
    """Where each node's key image is, as the viewer numbers it: the DICOM image (instance) number
    in its series, or the slice number (1-based) of a volume file along its acquired slice axis."""
    from .domain import acquisition_axis

    axis = acquisition_axis(image)
    n_slices = image.GetSize()[axis]
    series = inp.source.get("series_number")
    out = {}
    for n in nodes:
        centre = np.mean(n.axes.long_ends_ijk, axis=0)
        lps = image_canon.TransformContinuousIndexToPhysicalPoint([float(v) for v in centre])
        k = int(round(image.TransformPhysicalPointToContinuousIndex(lps)[axis]))
        numbers = inp.instance_numbers
        if numbers and 0 <= k < len(numbers) and numbers[k]:
            out[n.node_id] = f"image {numbers[k]}" + (f" of series {series}" if series is not None else "")
        else:
            out[n.node_id] = f"slice {k + 1} of {n_slices}"
    return out


def _key_images(image, stage: Path, nodes, img_arr, lab_arr, spacing):
    """Key images from real Slicer slice views (slicer-core, offscreen EGL) when available, else
    matplotlib. LLNASSIST_KEY_IMAGES=matplotlib forces the latter."""
    from . import report

    why = "LLNASSIST_KEY_IMAGES=matplotlib"
    if os.environ.get("LLNASSIST_KEY_IMAGES", "slicer") != "matplotlib":
        try:
            from . import mrml_bridge

            images, overview = mrml_bridge.report_images(image, stage)
            return images, overview, "slicer slice view (offscreen)"
        except ImportError:
            why = "slicer-core not installed"
        except Exception as exc:  # no EGL/GL on this machine: the report still gets images
            why = f"slicer rendering failed: {exc.__class__.__name__}"
    images = {n.node_id: report.key_image(img_arr, lab_arr, n, spacing) for n in nodes}
    k = max(nodes, key=lambda q: q.short_axis_mm).axes.key_slice if nodes else lab_arr.shape[0] // 2
    return images, report.overview_image(img_arr, lab_arr, k, spacing), f"matplotlib ({why})"


def _write_outputs(out_dir: Path, image, image_canon, labels, lab_arr, nodes, summary, timings, opts, t_write,
                   progress, left, inp):
    from . import report, segfile
    from .imageio import write_image

    img_arr = sitk.GetArrayFromImage(image_canon).astype(np.float32)
    spacing = image_canon.GetSpacing()
    notice = summary["domain"].get("notice", "")
    with staged_directory(out_dir, marker="summary.json") as stage:
        write_image(labels, stage / "labels.nii.gz")
        (stage / "nodes.csv").write_text(nodes_csv(nodes, notice), encoding="utf-8")
        names = slice_names(nodes, image, image_canon, inp)
        details = [{**node_details(n, image_canon), "key_image": names[n.node_id]} for n in nodes]
        (stage / "nodes.json").write_text(json.dumps(details, indent=2), encoding="utf-8")
        present = {(C.REGION_CODE[r], s) for r in C.REGION_LABELS for s in C.SIDES
                   if ((lab_arr == r) & (left == (s == "left"))).any()}
        specs = segfile.segments_for(nodes, present, {C.TAG_OUT_OF_DOMAIN: notice} if notice else None)
        ids = segfile.segment_id_volume(lab_arr, [(n.node_id, n.voxels) for n in nodes], left, specs)
        segfile.write_segmentation(stage / "segmentation.seg.nrrd", from_canonical(ids, image_canon, image), specs)
        images = {}
        overview = None
        if opts.key_images:
            images, overview, summary["key_image_renderer"] = _key_images(image, stage, nodes, img_arr, lab_arr,
                                                                          spacing)
        timings["write"] = time.perf_counter() - t_write
        summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        summary["timings_s"]["total"] = round(sum(timings.values()), 3)
        (stage / "report.html").write_text(report.build_html(summary, nodes, images, overview, names),
                                           encoding="utf-8")
        (stage / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    progress("done", 1.0, str(out_dir))


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
