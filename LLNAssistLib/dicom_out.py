"""The result as DICOM: a Segmentation (SEG) and a TID 1500 measurement report (Comprehensive 3D
SR), both referencing the analysed MR series (highdicom).

SEG: one segment per compartment and side and per node, coded with the conventions' SNOMED codes
(category anatomical structure; a node is a lymph node whose anatomic region is its CID 7600 site
with a laterality modifier; a compartment's type is its site with the laterality as type
modifier), the segment algorithm type from each segment's provenance (automatic, semi-automatic,
manual), the model as the algorithm, empty frames left out.

SR: one measurement group per node referencing its SEG segment: finding type lymph node, finding
site with laterality, short and long axis (mm), volume (mm3), the size criterion, border
irregularity and signal heterogeneity (private codes: DICOM has none), the model's call and the
clinical-radiomics score and probability; then one group with the patient-level status. The observer
is the algorithm (a device), or the reader who corrected the result.

Only images that exist are referenced: without DICOM input (or --dicom-reference) nothing is
written and the summary says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from . import __version__
from . import conventions as C
from .errors import InputError

SEG_FILE = "segmentation.seg.dcm"
SR_FILE = "report.sr.dcm"
SEG_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
NO_REFERENCE = ("the input is not a DICOM series; give --dicom-reference SERIES_DIR (the series the volume was "
                "made from) to write DICOM SEG and SR")


def _code(c: C.Code):
    from highdicom.sr import CodedConcept

    return CodedConcept(c.value, c.scheme, c.meaning)


def read_headers(files: list) -> list:
    """The series' headers (no pixel data), in the order of `files` (the volume's slice order)."""
    import pydicom

    return [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]


def _on_grid(headers: list, image: sitk.Image, normal_tol_mm: float) -> Optional[list]:
    """`headers` in the image's slice order when they are exactly its slices (count, rows, columns,
    pixel spacing, orientation within 1e-4, each position within 1e-2 mm in-plane and `normal_tol_mm`
    along the normal); None otherwise. Headers alone: no pixel data is read."""
    size, spacing = image.GetSize(), np.array(image.GetSpacing())
    d, origin = np.array(image.GetDirection()).reshape(3, 3), np.array(image.GetOrigin())
    if len(headers) != size[2]:
        return None
    by_k = {}
    for h in headers:
        try:
            pos = np.array([float(v) for v in h.ImagePositionPatient])
            iop = np.array([float(v) for v in h.ImageOrientationPatient])
            row_mm, col_mm = (float(v) for v in h.PixelSpacing)
            rows, cols = int(h.Rows), int(h.Columns)
        except (AttributeError, TypeError, ValueError):
            return None
        if (rows, cols) != (size[1], size[0]) or not np.allclose([col_mm, row_mm], spacing[:2], atol=1e-3) or \
                not np.allclose(iop, np.concatenate([d[:, 0], d[:, 1]]), atol=1e-4):
            return None
        offset = d.T @ (pos - origin)  # in the image's axes, mm
        k = int(round(offset[2] / spacing[2]))
        if np.abs(offset[:2]).max() > 1e-2 or abs(offset[2] - k * spacing[2]) > normal_tol_mm:
            return None
        by_k[k] = h
    return [by_k[k] for k in range(size[2])] if sorted(by_k) == list(range(size[2])) else None


def headers_for_grid(files: list, image: sitk.Image) -> list:
    """The headers of `files` (one series, any order) in the image's slice order, refused unless
    they are exactly its slices (positions along the normal within 5 % of a slice)."""
    headers = read_headers(files)
    ordered = _on_grid(headers, image, 0.05 * image.GetSpacing()[2])
    if ordered is None:
        size = image.GetSize()
        raise InputError(f"the DICOM series ({len(headers)} images) is not the volume's grid ({size[2]} slices of "
                         f"{size[0]}x{size[1]}); load the volume from that series")
    return ordered


def reference_headers(series_dir, image: sitk.Image) -> list:
    """The headers of the series in `series_dir` that has exactly the image's grid (--dicom-reference).
    Refused when none matches: a SEG must not point at other images."""
    from . import dicomseries

    path = Path(series_dir)
    if not path.exists() or not dicomseries.is_dicom_input(path):
        raise InputError(f"--dicom-reference {path}: not a DICOM folder, DICOMDIR or .zip; give the series the "
                         "image was made from")
    size = image.GetSize()
    for s in dicomseries.scan(dicomseries.dicom_root(path)):
        if len(s.files) == size[2]:
            ordered = _on_grid(read_headers(s.files), image, 1e-2)
            if ordered is not None:
                return ordered
    raise InputError(f"--dicom-reference {path}: no series there has the image's grid (size {size}, spacing, origin "
                     "and direction); give the series the image was made from")


def _algorithm(result):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    model = result.summary.get("model", {})
    return hd.AlgorithmIdentificationSequence(name=f"LLNAssist {model.get('id', 'model')}"[:64],
                                              family=codes.cid7162.ArtificialIntelligence,
                                              version=str(model.get("version", ""))[:64],
                                              source=f"LLNAssist {__version__}")


_ALGORITHM_TYPE = {C.PROVENANCE_AUTOMATIC: "AUTOMATIC", C.PROVENANCE_SEMI_AUTOMATIC: "SEMIAUTOMATIC",
                   C.PROVENANCE_MANUAL: "MANUAL"}


def _describe(spec: dict, node, algorithm, tracking_uid: Optional[str]):
    import highdicom as hd
    from pydicom.dataset import Dataset

    tags = spec["tags"]
    algo_type = _ALGORITHM_TYPE.get(tags.get(C.TAG_PROVENANCE), "AUTOMATIC")
    is_node = tags.get(C.TAG_KIND) == "node"
    side = node.side if node is not None else spec["id"].rsplit("_", 1)[-1]
    region = node.region if node is not None else spec["id"].split("_")[1]
    site = C.REGION_SITE_CODE.get(region)
    kw = {}
    if is_node:
        kw.update(tracking_uid=tracking_uid, tracking_id=f"node {node.node_id}"[:64],
                  anatomic_regions=[_code(site)] if site else None)
    rgb = np.array(spec["color"], float)
    desc = hd.seg.SegmentDescription(
        segment_number=int(spec["value"]), segment_label=spec["name"][:64],
        segmented_property_category=_code(C.ANATOMIC_STRUCTURE),
        segmented_property_type=_code(C.LYMPH_NODE if is_node else site),
        algorithm_type=algo_type, algorithm_identification=None if algo_type == "MANUAL" else algorithm,
        display_color=hd.color.CIELabColor(*_rgb_to_lab(rgb)), **kw)
    lat = C.LATERALITY_CODE.get(side)
    if lat is not None:
        mod = Dataset()
        mod.CodeValue, mod.CodingSchemeDesignator, mod.CodeMeaning = lat.value, lat.scheme, lat.meaning
        if is_node and site:  # the site's side: a modifier of the anatomic region
            desc.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [mod]
        elif not is_node:  # a compartment: its type's side
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [mod]
    return desc


def _rgb_to_lab(rgb: np.ndarray) -> tuple:
    """sRGB (0-1) to CIE L*a*b* (D65), as DICOM's RecommendedDisplayCIELabValue wants."""
    c = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = m @ c / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return float(116 * f[1] - 16), float(500 * (f[0] - f[1])), float(200 * (f[1] - f[2]))


_EQUIPMENT = {"manufacturer": "LLNAssist", "manufacturer_model_name": "LLNAssist", "software_versions": __version__,
              "device_serial_number": "1"}


def build_seg(result, headers: list, specs: list, ids: sitk.Image, tracking: dict):
    import highdicom as hd

    arr = sitk.GetArrayFromImage(ids)  # (k, j, i): frames in the series' slice order, rows, columns
    if arr.shape != (len(headers), int(headers[0].Rows), int(headers[0].Columns)):
        raise InputError(f"the DICOM series to reference has {len(headers)} images of {headers[0].Rows}x"
                         f"{headers[0].Columns}; the result's grid is {arr.shape}: they do not belong together")
    nodes = {str(n.node_id): n for n in result.nodes}
    algorithm = _algorithm(result)
    descs = [_describe(s, nodes.get(s["tags"].get(C.TAG_NODE_ID)), algorithm,
                       tracking.get(s["tags"].get(C.TAG_NODE_ID))) for s in specs]
    seg = hd.seg.Segmentation(
        source_images=headers, pixel_array=arr.astype(np.uint16 if len(specs) > 255 else np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descs,
        series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        content_label="LLNASSIST", content_description=_content_description(result),
        content_creator_name=_reader_name(result), omit_empty_frames=True, **_EQUIPMENT)
    seg.SeriesDescription = "LLNAssist lateral lymph nodes"
    return seg


def _reader_name(result) -> Optional[str]:
    """The reader id as a DICOM person name: a one-part id gets the trailing caret that marks it as
    the family-name component on purpose."""
    reader = (result.observer or {}).get("reader")
    if not reader:
        return None
    return reader[:63] if "^" in reader else reader[:63] + "^"


def _content_description(result) -> str:
    """64 characters: what a viewer shows first. Out-of-domain and phantom-only models say so."""
    if result.notice:
        return "OUTSIDE VALIDATED DOMAIN (forced)"
    if result.summary.get("model", {}).get("synthetic_training_data"):
        return "PHANTOM-TRAINED MODEL - NOT FOR CLINICAL USE"
    return "Lateral lymph nodes and compartments"


def _yes_no(flag: bool):
    return _code(C.YES if flag else C.NO)


def build_sr(result, headers: list, seg, tracking: dict):
    import highdicom as hd
    from highdicom.sr import (
        DeviceObserverIdentifyingAttributes,
        FindingSite,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        PersonObserverIdentifyingAttributes,
        QualitativeEvaluation,
        ReferencedSegment,
        TrackingIdentifier,
        VolumetricROIMeasurementsAndQualitativeEvaluations,
    )
    from pydicom.sr.codedict import codes

    model = result.summary.get("model", {})
    reader = _reader_name(result)
    if reader:
        context = ObservationContext(observer_person_context=ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(name=reader)))
    else:
        context = ObservationContext(observer_device_context=ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                uid=hd.UID(), name=f"LLNAssist {model.get('id', '')}"[:64], manufacturer_name="LLNAssist",
                model_name=str(model.get("id", ""))[:64])))
    number_of_node = {d.TrackingID: int(d.SegmentNumber) for d in seg.SegmentSequence if "TrackingID" in d}
    groups = []
    for n in result.nodes:
        row = n.row()
        site = C.REGION_SITE_CODE.get(n.region)
        lat = C.LATERALITY_CODE.get(n.side)
        sites = [FindingSite(anatomic_location=_code(site), laterality=_code(lat) if lat else None)] if site else None
        measurements = [
            Measurement(name=_code(C.SHORT_AXIS_CODE), value=float(row["short_axis_mm"]), unit=_code(C.UCUM_MM)),
            Measurement(name=_code(C.LONG_AXIS_CODE), value=float(row["long_axis_mm"]), unit=_code(C.UCUM_MM)),
            Measurement(name=_code(C.VOLUME_CODE), value=float(row["volume_mm3"]), unit=_code(C.UCUM_MM3)),
        ]
        for key, code in (("radiomics_score", C.SR_RADIOMICS_SCORE),
                          ("radiomics_probability", C.SR_RADIOMICS_PROBABILITY)):
            if row.get(key) not in ("", None):
                measurements.append(Measurement(name=_code(code), value=float(row[key]), unit=_code(C.UCUM_NO_UNITS)))
        crit = n.criteria or {}
        evaluations = [
            QualitativeEvaluation(_code(C.SR_MODEL_STATUS), _code(C.STATUS_CODE[n.dl_status])),
            QualitativeEvaluation(_code(C.SR_SIZE_CRITERION), _yes_no(bool(crit.get("size_positive")))),
            QualitativeEvaluation(_code(C.SR_IRREGULAR_BORDER), _yes_no(bool(crit.get("irregular_border")))),
            QualitativeEvaluation(_code(C.SR_HETEROGENEOUS_SIGNAL), _yes_no(bool(crit.get("heterogeneous_signal")))),
        ]
        tid = f"node {n.node_id}"
        groups.append(VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=tracking[str(n.node_id)], identifier=tid),
            referenced_segment=ReferencedSegment.from_segmentation(seg, number_of_node[tid]),
            finding_type=_code(C.LYMPH_NODE), finding_sites=sites, measurements=measurements,
            qualitative_evaluations=evaluations))
    groups.append(MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier="patient"),
        qualitative_evaluations=[QualitativeEvaluation(
            _code(C.SR_PATIENT_STATUS), _code(C.STATUS_CODE[result.summary["patient_status"]]))]))
    report = MeasurementReport(observation_context=context, procedure_reported=_code(C.IMAGING_PROCEDURE),
                               imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*headers, seg], content=report, series_instance_uid=hd.UID(), series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="LLNAssist", is_complete=True,
        is_final=False, is_verified=False)
    sr.SeriesDescription = "LLNAssist lateral lymph node report"
    _declare_private_scheme(sr)
    return sr


def _declare_private_scheme(ds) -> None:
    """Names the private coding scheme, as PS3.3 C.12.1.1.3 asks of local schemes."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = C.PRIVATE_SCHEME
    item.CodingSchemeName = C.SR_CODING_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "LLNAssist"
    ds.CodingSchemeIdentificationSequence = [item]


def write(result, folder: Path) -> Optional[dict]:
    """Writes SEG and SR into `folder` when the result references DICOM images; records in the
    summary what was written, or why not."""
    from .writers import segment_specs

    headers = getattr(result.source, "dicom_headers", None) or []
    if not headers:
        result.summary["dicom"] = {"written": False, "reason": NO_REFERENCE}
        return None
    try:
        import highdicom  # noqa: F401
    except ImportError:
        result.summary["dicom"] = {"written": False, "reason": "highdicom is not installed (it needs Python 3.10 or "
                                   "newer); the other outputs are complete"}
        return None
    import time

    import highdicom as hd

    t0 = time.perf_counter()
    specs, ids = segment_specs(result)
    tracking = {str(n.node_id): hd.UID() for n in result.nodes}
    seg = build_seg(result, headers, specs, ids, tracking)
    pseudonymized = bool(result.source.source.get("pseudonymized")) if hasattr(result.source, "source") else False
    if pseudonymized:  # the headers were de-identified; the new objects say so too
        from .deidentify import mark

        mark(seg)
    seg.save_as(str(folder / SEG_FILE))
    sr = build_sr(result, headers, seg, tracking)
    if pseudonymized:
        mark(sr)
    sr.save_as(str(folder / SR_FILE))
    info = {"written": True, "study_instance_uid": str(seg.StudyInstanceUID),
            "referenced_series_instance_uid": str(headers[0].SeriesInstanceUID),
            "seg": {"file": SEG_FILE, "series_instance_uid": str(seg.SeriesInstanceUID),
                    "sop_instance_uid": str(seg.SOPInstanceUID), "segments": len(specs)},
            "sr": {"file": SR_FILE, "series_instance_uid": str(sr.SeriesInstanceUID),
                   "sop_instance_uid": str(sr.SOPInstanceUID), "measurement_groups": len(result.nodes) + 1},
            "write_s": round(time.perf_counter() - t0, 3)}
    result.summary["dicom"] = info
    return info


def _site_and_side(d, kind: str) -> tuple:
    """(region code 'II'/'OB'/'EI' or None, 'left'/'right' or None) from a segment's codes."""
    site_of = {c.value: r for r, c in C.REGION_SITE_CODE.items()}
    side_of = {c.value: s for s, c in C.LATERALITY_CODE.items()}
    item = d.AnatomicRegionSequence[0] if kind == "node" and "AnatomicRegionSequence" in d else \
        d.SegmentedPropertyTypeCodeSequence[0]
    mods = item.get("AnatomicRegionModifierSequence") or item.get("SegmentedPropertyTypeModifierCodeSequence") or []
    side = next((side_of[m.CodeValue] for m in mods if m.CodeValue in side_of), None)
    return site_of.get(item.CodeValue), side


def read_seg(path, reference: sitk.Image) -> list:
    """A DICOM SEG's segments on the reference image's grid (nearest neighbour; exact when the
    grids coincide): [{number, label, kind, node_id, status, region, side, provenance, mask (k, j, i) bool}].
    slicer-core has no SEG reader; this is how a SEG reaches a scene (mrml_bridge.load_dicom_seg)."""
    import re

    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # not a SEG, or one highdicom cannot parse
        raise InputError(f"{path} is not a readable DICOM Segmentation ({exc.__class__.__name__})") from None
    vol = seg.get_volume(combine_segments=False)
    numbers = vol.get_channel_values(vol.channel_descriptors[0])
    algo = {v: k for k, v in _ALGORITHM_TYPE.items()}
    out = []
    for d in seg.SegmentSequence:
        num = int(d.SegmentNumber)
        typ = d.SegmentedPropertyTypeCodeSequence[0].CodeValue
        kind = "node" if typ == C.LYMPH_NODE.value else "region"
        m = re.search(r"\((positive|negative)\)", str(d.SegmentLabel))
        region, side = _site_and_side(d, kind)
        tid = str(d.get("TrackingID", ""))
        if num in numbers:
            img = vol.get_channel(ReferencedSegmentNumber=num).to_simpleitk()
            mask = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(img, sitk.sitkUInt8), reference, sitk.Transform(),
                                                        sitk.sitkNearestNeighbor, 0)) > 0
        else:
            mask = np.zeros(sitk.GetArrayViewFromImage(reference).shape, bool)
        out.append({"number": num, "label": str(d.SegmentLabel), "kind": kind,
                    "node_id": tid.split(" ", 1)[1] if tid.startswith("node ") else None,
                    "status": m.group(1) if (m and kind == "node") else None, "region": region, "side": side,
                    "provenance": algo.get(str(d.SegmentAlgorithmType), C.PROVENANCE_AUTOMATIC), "mask": mask})
    return out
