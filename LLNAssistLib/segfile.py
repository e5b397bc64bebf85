"""`.seg.nrrd` writing (slicerio): named, coloured, terminology-coded segments that 3D Slicer opens."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import SimpleITK as sitk

from . import conventions as C
from .atomic import atomic_path
from .imageio import ijk_to_lps_matrix


def _code(c: C.Code) -> list:
    return [c.scheme, c.value, c.meaning]


def terminology(region: str, side: str) -> dict:
    """Category anatomical structure; type the lymph-node site (DICOM CID 7600); modifier laterality."""
    site = C.REGION_SITE_CODE.get(region, C.LYMPH_NODE)
    term = {"contextName": C.TERMINOLOGY_CONTEXT, "category": _code(C.ANATOMIC_STRUCTURE),
            "type": _code(site)}
    if side in C.LATERALITY_CODE:
        term["typeModifier"] = _code(C.LATERALITY_CODE[side])
    return term


def terminology_json() -> dict:
    """The Slicer terminology file (Resources/Terminology/LLNAssist.term.json) of the codes above,
    so Slicer's terminology selector and DICOM SEG export know our nodes and regions."""

    def entry(c: C.Code, **extra) -> dict:
        return {"CodingSchemeDesignator": c.scheme, "CodeValue": c.value, "CodeMeaning": c.meaning, **extra}

    modifiers = [entry(C.LATERALITY_CODE[s]) for s in C.SIDES]
    node_colour = list(C.LABEL_COLORS[C.NODE_NEGATIVE])
    types = [entry(C.LYMPH_NODE, recommendedDisplayRGBValue=node_colour, Modifier=modifiers)]
    for region, code in C.REGION_SITE_CODE.items():
        colour = list(C.LABEL_COLORS[C.REGION_LABEL_FROM_CODE[region]])
        types.append(entry(code, recommendedDisplayRGBValue=colour, Modifier=modifiers))
    return {
        "SegmentationCategoryTypeContextName": C.TERMINOLOGY_CONTEXT,
        "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#",
        "SegmentationCodes": {"Category": [entry(C.ANATOMIC_STRUCTURE, showAnatomy="false", Type=types)]},
    }


def segments_for(nodes, region_side: dict, extra_tags: Optional[dict] = None,
                 provenance: Optional[dict] = None) -> list[dict]:
    """Segment specs: (id, name, colour 0-1, terminology, tags, label value in the segment-id volume).
    `extra_tags` go on every segment (the out-of-domain mark); `provenance` maps a node id to how its
    segment was made (default: automatic, the model's)."""
    specs = []
    value = 1
    for (region, side) in sorted(region_side):
        label = C.REGION_LABEL_FROM_CODE[region]
        specs.append({"value": value, "id": f"region_{region}_{side}",
                      "name": C.region_segment_name(region, side),
                      "color": [c / 255 for c in C.LABEL_COLORS[label]], "terminology": terminology(region, side),
                      "tags": {C.TAG_KIND: "region", C.TAG_PROVENANCE: C.PROVENANCE_AUTOMATIC}})
        value += 1
    for n in nodes:
        label = C.LABEL_FROM_STATUS[n.dl_status]
        specs.append({"value": value, "id": f"node_{n.node_id}",
                      "name": C.node_segment_name(str(n.node_id), n.dl_status, n.side, n.region),
                      "color": [c / 255 for c in C.LABEL_COLORS[label]], "terminology": terminology(n.region, n.side),
                      "tags": {C.TAG_KIND: "node", C.TAG_STATUS: n.dl_status,
                               C.TAG_STATUS_CODE: C.STATUS_CODE[n.dl_status].value, C.TAG_NODE_ID: str(n.node_id),
                               C.TAG_PROVENANCE: (provenance or {}).get(n.node_id, C.PROVENANCE_AUTOMATIC)}})
        value += 1
    for spec in specs:
        spec["tags"].update(extra_tags or {})
    return specs


def write_segmentation(path: str | os.PathLike, segment_ids: sitk.Image, specs: list[dict]) -> None:
    """`segment_ids` holds spec['value'] per voxel on the reference image grid."""
    import slicerio

    arr = sitk.GetArrayFromImage(segment_ids).transpose(2, 1, 0)  # (k, j, i) -> (i, j, k)
    seg = slicerio.create_segmentation(arr.shape, ijk_to_lps_matrix(segment_ids))
    for spec in specs:
        fields = {k: spec[k] for k in ("id", "name", "color", "terminology", "tags")}
        slicerio.add_segment(seg, arr == spec["value"], fields)
    seg["containedRepresentationNames"] = ["Binary labelmap"]
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), seg)


def segment_id_volume(labels_canon: np.ndarray, node_voxels: list, region_side_of_voxel: np.ndarray,
                      specs: list[dict]) -> np.ndarray:
    """Canonical-grid volume of segment values from the label map, per-voxel side and node voxels."""
    out = np.zeros(labels_canon.shape, np.uint16)
    by_id = {s["id"]: s["value"] for s in specs}
    for region, code in C.REGION_CODE.items():
        for side in C.SIDES:
            v = by_id.get(f"region_{code}_{side}")
            if v:
                out[(labels_canon == region) & (region_side_of_voxel == (side == "left"))] = v
    for node_id, vox in node_voxels:
        out[vox] = by_id[f"node_{node_id}"]
    return out
