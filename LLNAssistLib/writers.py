"""Every output of an analysis, each written by one writer from the one result value
(results.AnalysisResult). `publish` writes them all into a staging folder and publishes it whole
(summary.json last): the CLI, batch and the Slicer module's analysis all go through it. Data flows
one way: image -> result -> writers; the key-image renderer is handed in (keyimages.py).
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from . import conventions as C
from .atomic import staged_directory
from .imageio import from_canonical, index_to_ras

# Every file `analyze` writes: an output folder may hold these and nothing else (atomic.check_output_folder).
OUTPUT_FILES = ("labels.nii.gz", "nodes.csv", "nodes.json", "segmentation.seg.nrrd", "report.html", "summary.json",
                "segmentation.seg.dcm", "report.sr.dcm")


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


def slice_names(result) -> dict:
    """Where each node's key image is, as the viewer numbers it: the DICOM image (instance) number
    in its series, or the slice number (1-based) of a volume file along its acquired slice axis."""
    from .domain import acquisition_axis

    image, inp = result.image, result.source
    axis = acquisition_axis(image)
    n_slices = image.GetSize()[axis]
    series = inp.source.get("series_number")
    out = {}
    for n in result.nodes:
        centre = np.mean(n.axes.long_ends_ijk, axis=0)
        lps = result.image_canon.TransformContinuousIndexToPhysicalPoint([float(v) for v in centre])
        k = int(round(image.TransformPhysicalPointToContinuousIndex(lps)[axis]))
        numbers = inp.instance_numbers
        if numbers and 0 <= k < len(numbers) and numbers[k]:
            out[n.node_id] = f"image {numbers[k]}" + (f" of series {series}" if series is not None else "")
        else:
            out[n.node_id] = f"slice {k + 1} of {n_slices}"
    return out


def _cached_slice_names(result) -> dict:
    """slice_names, computed once per result (the tables and the report both show them)."""
    if "slice_names" not in result.extra:
        result.extra["slice_names"] = slice_names(result)
    return result.extra["slice_names"]


def segment_specs(result) -> tuple:
    """(segment specs, segment-id volume on the input grid): one segment per compartment and side
    and per node; shared by the .seg.nrrd and the DICOM SEG."""
    from . import segfile

    if "segments" in result.extra:
        return result.extra["segments"]
    lab, left = result.labels_canon, result.left
    present = {(C.REGION_CODE[r], s) for r in C.REGION_LABELS for s in C.SIDES
               if ((lab == r) & (left == (s == "left"))).any()}
    notice = result.notice
    specs = segfile.segments_for(result.nodes, present, {C.TAG_OUT_OF_DOMAIN: notice} if notice else None,
                                 result.extra.get("provenance"))
    ids = segfile.segment_id_volume(lab, [(n.node_id, n.voxels) for n in result.nodes], left, specs)
    result.extra["segments"] = (specs, from_canonical(ids, result.image_canon, result.image))
    return result.extra["segments"]


def write_labelmap(result, folder: Path) -> None:
    from .imageio import write_image

    write_image(result.labels, folder / "labels.nii.gz")


def write_tables(result, folder: Path) -> None:
    (folder / "nodes.csv").write_text(nodes_csv(result.nodes, result.notice), encoding="utf-8")
    names = _cached_slice_names(result)
    details = [{**node_details(n, result.image_canon), "key_image": names[n.node_id]} for n in result.nodes]
    (folder / "nodes.json").write_text(json.dumps(details, indent=2), encoding="utf-8")


def write_segfile(result, folder: Path) -> None:
    from . import segfile

    specs, ids = segment_specs(result)
    segfile.write_segmentation(folder / "segmentation.seg.nrrd", ids, specs)


def write_report(result, folder: Path, rendered: Optional[tuple] = None) -> None:
    """report.html; `rendered` is a renderer's (key images, overview, name), or None."""
    from . import report

    images, overview = {}, None
    if rendered is not None:
        images, overview, result.summary["key_image_renderer"] = rendered
    names = _cached_slice_names(result)
    (folder / "report.html").write_text(report.build_html(result.summary, result.nodes, images, overview, names),
                                        encoding="utf-8")


def write_dicom(result, folder: Path) -> None:
    """DICOM SEG and TID1500 SR, when the result has DICOM images to reference."""
    from . import dicom_out

    dicom_out.write(result, folder)


def write_summary(result, folder: Path) -> None:
    (folder / "summary.json").write_text(json.dumps(result.summary, indent=2) + "\n", encoding="utf-8")


def publish(result, out_dir, renderer: Optional[Callable] = None, progress: Callable = lambda *a, **k: None,
            t_write: Optional[float] = None) -> dict:
    """Writes every output into a staging folder beside `out_dir`, then publishes it whole.
    `renderer` makes the report's key images (None: a report without them)."""
    t_write = time.perf_counter() if t_write is None else t_write
    out_dir = Path(out_dir)
    with staged_directory(out_dir, marker="summary.json") as stage:
        write_labelmap(result, stage)
        write_tables(result, stage)
        write_segfile(result, stage)
        write_dicom(result, stage)
        rendered = renderer(result, stage) if renderer is not None else None  # reads the files above
        result.timings["write"] = time.perf_counter() - t_write
        result.summary["timings_s"] = {k: round(v, 3) for k, v in result.timings.items()}
        result.summary["timings_s"]["total"] = round(sum(result.timings.values()), 3)
        write_report(result, stage, rendered)
        write_summary(result, stage)
    progress("done", 1.0, str(out_dir))
    return result.summary
