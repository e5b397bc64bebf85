"""MRML bridge: LLNAssist results to a Slicer scene and back. Every function takes the scene (or
its nodes) as an argument, so the same code runs inside the Slicer application and on a plain
`vtkMRMLScene` from the `slicer-core` wheel (how it is tested here).

- `load_results`: one segmentation node (regions per side and one segment per node; names,
  colours, terminology and provenance tags from `conventions`), a long- and a short-axis line per
  node on its key slice, named with the value, and a table node with the nodes.csv columns.
- `recompute`: after the user edits, adds or deletes node segments, measures every node segment
  again (region, side, axes, morphology, radiomics), updates names, colours, terminology,
  provenance, lines, table and the patient status.
- `click_to_segment`: a node segment from one point (`clickseg`), provenance semi-automatic.
- `save_mrb` / `load_mrb`, `jump_to_node`, and `render_key_image` (real slice-view rendering
  offscreen through EGL).

This is the only library module that imports `slicer`/`vtk` at import time (DESIGN.md).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from . import conventions as C
from . import segfile
from .errors import InputError
from .imageio import index_to_ras
from .imageio import to_axial_canonical as _canonical

TABLE_COLUMNS = C.NODES_CSV_COLUMNS + ("provenance", "status_source")
LINE_ATTR_NODE = "LLNAssist.NodeId"
LINE_ATTR_AXIS = "LLNAssist.Axis"
ATTR_ROLE = "LLNAssist.Role"
ATTR_PATIENT_STATUS = "LLNAssist.PatientStatus"
ATTR_MODEL_NOTICE = "LLNAssist.ModelNotice"
ATTR_OUT_OF_DOMAIN = "LLNAssist.OutOfDomain"  # the --force notice of summary.json, when there is one
ATTR_HIGHEST_ID = "LLNAssist.HighestNodeId"
ATTR_MODEL = "LLNAssist.Model"  # summary.json's model record (JSON), for the DICOM export's provenance

# Keep the application logic of scenes made here alive as long as the scene (VTK would free it).
_APP_LOGICS: dict = {}
_RENDER_COUNTER = itertools.count(1)


# --- scenes ---------------------------------------------------------------------------------------
def new_scene():
    """A scene with the application, colour, markups and segmentation logics Slicer would register
    (what markups storage, MRB reading and slice rendering need), for use outside Slicer."""
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    app.GetColorLogic().AddDefaultColorNodes()
    app.SetSliceLogics(vtk.vtkCollection())
    app.SetViewLogics(vtk.vtkCollection())
    logics = []
    for name, cls in (("Markups", slicer.vtkSlicerMarkupsLogic),
                      ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic)):
        lg = cls()
        lg.SetMRMLScene(scene)
        lg.SetMRMLApplicationLogic(app)
        app.SetModuleLogic(name, lg)
        logics.append(lg)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    scene.AddNode(slicer.vtkMRMLInteractionNode())  # views and markups widgets expect the singleton
    _APP_LOGICS[scene] = (app, logics)
    return scene


def _app_logic(scene):
    if scene in _APP_LOGICS:
        return _APP_LOGICS[scene][0]
    app = getattr(slicer, "app", None)  # inside the Slicer application
    if app is not None:
        return app.applicationLogic()
    raise RuntimeError("this scene has no application logic; create it with mrml_bridge.new_scene()")


def load_volume(scene, path: str | os.PathLike, name: str = "T2W"):
    """A scalar volume node read from a file (NIfTI, NRRD, MHA)."""
    if not Path(path).is_file():
        raise InputError(f"image {path} does not exist; check the path")
    vol = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(vol):
        scene.RemoveNode(vol)
        scene.RemoveNode(storage)
        raise InputError(f"image {path} could not be read; give a NIfTI, NRRD or MHA volume")
    vol.SetAndObserveStorageNodeID(storage.GetID())
    vol.CreateDefaultDisplayNodes()
    return vol


def export_volume(volume_node, path: str | os.PathLike) -> Path:
    """Writes the volume's voxels and geometry to a file (NRRD, NIfTI, MHA) without touching the
    node's storage node: Slicer's saveNode would point the user's volume at this file, and the
    next scene save would go there."""
    from .atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(volume_to_sitk(volume_node), str(tmp), True)
    return path


# --- what a reading case adds to the scene ------------------------------------------------------------
# Data the module loads per case; everything else (parameter nodes, views, colour tables) stays.
_CASE_CLASSES = ("vtkMRMLVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLMarkupsNode", "vtkMRMLTableNode",
                 "vtkMRMLModelNode")


def clear_case(scene) -> int:
    """Removes the previous case's data (volumes, segmentations, markups, tables, models, with their
    display and storage nodes). Unlike scene.Clear(0), which resets every singleton node, the
    module's parameter node (study, reader, display settings) keeps its values. Returns how many
    nodes were removed."""
    removed = 0
    for cls in _CASE_CLASSES:
        for node in _nodes(scene, cls):
            # a node already removed with its parent, or the views' own hidden slice models
            if node.GetScene() is None or (cls == "vtkMRMLModelNode" and node.GetHideFromEditors()):
                continue
            _remove_with_helpers(scene, node)
            removed += 1
    return removed


# --- point placement ------------------------------------------------------------------------------------
def _singleton(scene, cls: str):
    node = scene.GetFirstNodeByClass(cls)
    if node is None:
        node = scene.AddNode(getattr(slicer, cls)())
    return node


def placement_node(scene, node=None, name: str = "LLNAssist point"):
    """The fiducial list points are placed into: `node` while it is still in this scene, else a
    new one (a node kept across a scene clear has a stale id and is no longer in the scene)."""
    if node is not None and node.GetScene() is not None and scene.IsNodePresent(node):
        return node
    return scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)


def start_placement(scene, node) -> None:
    """Place mode for one point into `node` (what Markups' StartPlaceMode(False) does)."""
    selection = _singleton(scene, "vtkMRMLSelectionNode")
    selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
    selection.SetActivePlaceNodeID(node.GetID())
    interaction = _singleton(scene, "vtkMRMLInteractionNode")
    interaction.SetPlaceModePersistence(0)
    interaction.SetCurrentInteractionMode(interaction.Place)


def stop_placement(scene) -> None:
    """Back to view/transform mode (unticking a place button must end place mode)."""
    interaction = scene.GetFirstNodeByClass("vtkMRMLInteractionNode")
    if interaction is not None and interaction.GetCurrentInteractionMode() == interaction.Place:
        interaction.SetCurrentInteractionMode(interaction.ViewTransform)


def placing(scene) -> bool:
    interaction = scene.GetFirstNodeByClass("vtkMRMLInteractionNode")
    return interaction is not None and interaction.GetCurrentInteractionMode() == interaction.Place


# --- edits the module recomputes after ---------------------------------------------------------------------
def edit_events() -> tuple:
    """vtkSegmentation events that mean the user changed the masks. Only the source (binary
    labelmap) representation counts: RepresentationModified also fires when 3D surfaces are
    generated for display, which is not an edit. Slicer < 5.4 called it MasterRepresentationModified."""
    seg = slicer.vtkSegmentation
    source = getattr(seg, "SourceRepresentationModified", None) or seg.MasterRepresentationModified
    return (source, seg.SegmentAdded, seg.SegmentRemoved)


# --- geometry ---------------------------------------------------------------------------------------
def _ijk_to_ras(volume_node) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return m


def volume_to_sitk(volume_node) -> sitk.Image:
    """The volume as a SimpleITK image (LPS geometry), voxel for voxel."""
    data = volume_node.GetImageData()
    dims = data.GetDimensions()
    arr = numpy_support.vtk_to_numpy(data.GetPointData().GetScalars()).reshape(dims[::-1])
    img = sitk.GetImageFromArray(arr.copy())
    m = _ijk_to_ras(volume_node)
    a = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    direction_ras = a[:3, :3] / spacing
    flip = np.diag([-1.0, -1.0, 1.0])  # RAS -> LPS
    img.SetSpacing(spacing.tolist())
    img.SetOrigin((flip @ a[:3, 3]).tolist())
    img.SetDirection((flip @ direction_ras).ravel().tolist())
    return img


def segment_mask(seg_node, segment_id: str, volume_node) -> np.ndarray:
    """The segment as a boolean (k, j, i) array on the volume's grid."""
    scene = seg_node.GetScene()
    colours_before = {n.GetID() for n in _nodes(scene, "vtkMRMLColorTableNode")}
    lm = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "_llnassist_tmp")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(seg_node, ids, lm, volume_node)
        data = lm.GetImageData()
        dims = data.GetDimensions()
        return numpy_support.vtk_to_numpy(data.GetPointData().GetScalars()).reshape(dims[::-1]) > 0
    finally:
        _remove_with_helpers(scene, lm)
        # the export makes a colour table per call; without this a long edit session fills the scene
        for n in _nodes(scene, "vtkMRMLColorTableNode"):
            if n.GetID() not in colours_before:
                scene.RemoveNode(n)


def _nodes(scene, cls: str) -> list:
    coll = scene.GetNodesByClass(cls)
    return [coll.GetItemAsObject(i) for i in range(coll.GetNumberOfItems())]


def set_segment_mask(seg_node, segment_id: str, mask: np.ndarray, volume_node) -> None:
    """Replaces the segment's content with a (k, j, i) mask on the volume's grid."""
    oriented = slicer.vtkOrientedImageData()
    oriented.SetDimensions(*mask.shape[::-1])
    oriented.SetImageToWorldMatrix(_ijk_to_ras(volume_node))
    scalars = numpy_support.numpy_to_vtk(mask.astype(np.uint8).ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    oriented.GetPointData().SetScalars(scalars)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    logic.SetBinaryLabelmapToSegment(oriented, seg_node, segment_id, logic.MODE_REPLACE)


def _mask_hash(mask: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(mask.astype(bool)).tobytes() + str(mask.shape).encode()).hexdigest()[:16]


def _provenance(segment, mask: np.ndarray) -> str:
    """How a node segment was made: a model segment whose mask the user changed is semi-automatic;
    one without LLNAssist's provenance tag was drawn (manual)."""
    prov = _tag(segment, C.TAG_PROVENANCE) or C.PROVENANCE_MANUAL
    if prov == C.PROVENANCE_AUTOMATIC and _tag(segment, C.TAG_MASK_HASH) not in ("", _mask_hash(mask)):
        prov = C.PROVENANCE_SEMI_AUTOMATIC
    return prov


# --- segments ---------------------------------------------------------------------------------------
def _tag(segment, name: str) -> str:
    value = vtk.reference("")
    return str(value) if segment.GetTag(name, value) else ""


def _terminology_string(region: str, side: str) -> str:
    """Slicer's TerminologyEntry tag for a segment of this region and side."""
    t = segfile.terminology(region, side)

    def code(c):
        return "^".join(c) if c else "^^"

    return "~".join([t["contextName"], code(t["category"]), code(t["type"]), code(t.get("typeModifier")), "",
                     "^^", "^^"])


def _style_node_segment(seg_node, segment_id: str, node_id: int, status: str, side: str, region: str,
                        provenance: str, mask: Optional[np.ndarray]) -> None:
    seg = seg_node.GetSegmentation().GetSegment(segment_id)
    seg.SetName(C.node_segment_name(str(node_id), status, side, region))
    seg.SetColor(*[c / 255 for c in C.LABEL_COLORS[C.LABEL_FROM_STATUS[status]]])
    seg.SetTag(C.TAG_KIND, "node")
    seg.SetTag(C.TAG_NODE_ID, str(node_id))
    seg.SetTag(C.TAG_STATUS, status)
    seg.SetTag(C.TAG_STATUS_CODE, C.STATUS_CODE[status].value)
    seg.SetTag(C.TAG_PROVENANCE, provenance)
    seg.SetTag("TerminologyEntry", _terminology_string(region, side))
    if mask is not None:
        seg.SetTag(C.TAG_MASK_HASH, _mask_hash(mask))


def _segment_ids(seg_node, regions: bool) -> list[str]:
    sg = seg_node.GetSegmentation()
    ids = [sg.GetNthSegmentID(i) for i in range(sg.GetNumberOfSegments())]
    return [s for s in ids if (_tag(sg.GetSegment(s), C.TAG_KIND) == "region") == regions]


def node_segment_ids(seg_node) -> list[str]:
    """Every segment that is not a region: nodes, including ones the user added."""
    return _segment_ids(seg_node, regions=False)


def region_segment_ids(seg_node) -> list[str]:
    return _segment_ids(seg_node, regions=True)


# --- lines and table ------------------------------------------------------------------------------
def _remove_lines(scene) -> None:
    for ln in axis_lines(scene):
        _remove_with_helpers(scene, ln)


def _remove_with_helpers(scene, node) -> None:
    """Removes a node with its display and storage nodes (RemoveNode alone leaves them behind)."""
    helpers = []
    if hasattr(node, "GetNumberOfDisplayNodes"):  # tables are storable, not displayable
        helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if hasattr(node, "GetNumberOfStorageNodes"):
        helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for h in helpers:
        if h is not None and h.GetScene() is not None:
            scene.RemoveNode(h)


def _role_nodes(scene, cls: str, role: str) -> list:
    return [n for n in _nodes(scene, cls) if n.GetAttribute(ATTR_ROLE) == role]


def axis_lines(scene) -> list:
    return _role_nodes(scene, "vtkMRMLMarkupsLineNode", "axis")


def _add_line(scene, node_id: int, axis: str, ends_ras, length_mm: float, status: str):
    ln = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"Node {node_id} {axis} axis {length_mm:.1f} mm")
    ln.SetAttribute(ATTR_ROLE, "axis")
    ln.SetAttribute(LINE_ATTR_NODE, str(node_id))
    ln.SetAttribute(LINE_ATTR_AXIS, axis)
    ln.CreateDefaultDisplayNodes()
    for p in ends_ras:
        ln.AddControlPoint(vtk.vtkVector3d(*[float(v) for v in p]))
    ln.SetLocked(True)  # measurements follow the segment; edit the segment, not the line
    disp = ln.GetDisplayNode()
    if disp is not None:
        rgb = [c / 255 for c in C.LABEL_COLORS[C.LABEL_FROM_STATUS[status]]]
        disp.SetSelectedColor(*rgb)
        disp.SetColor(*rgb)
        disp.SetPropertiesLabelVisibility(True)
    return ln


def results_table(scene):
    t = _role_nodes(scene, "vtkMRMLTableNode", "nodes")
    return t[0] if t else None


def _write_table(scene, rows: list[dict]):
    table = results_table(scene)
    if table is None:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", "LLNAssist nodes")
        table.SetAttribute(ATTR_ROLE, "nodes")
    vt = vtk.vtkTable()
    for name in TABLE_COLUMNS:
        numeric = name not in ("side", "region", "dl_status", "provenance", "status_source", "size_positive")
        col = vtk.vtkDoubleArray() if numeric and name != "node_id" else (
            vtk.vtkIntArray() if name == "node_id" else vtk.vtkStringArray())
        col.SetName(name)
        for r in rows:
            v = r.get(name, "")
            if isinstance(col, vtk.vtkStringArray):
                col.InsertNextValue(str(v))
            elif isinstance(col, vtk.vtkIntArray):
                col.InsertNextValue(int(v))
            else:
                col.InsertNextValue(float(v) if v not in ("", None) else float("nan"))
        vt.AddColumn(col)
    table.SetAndObserveTable(vt)
    table.SetUseColumnTitleAsColumnHeader(True)
    return table


def table_rows(table) -> list[dict]:
    vt = table.GetTable()
    out = []
    for r in range(vt.GetNumberOfRows()):
        out.append({vt.GetColumnName(c): vt.GetValue(r, c).ToString() for c in range(vt.GetNumberOfColumns())})
    return out


def jump_to_node(scene, table, row: int) -> tuple:
    """Centres every slice view on the node of a table row (what clicking a row does)."""
    rows = table_rows(table)
    if not 0 <= row < len(rows):
        raise InputError(f"row {row} is not in the node table (it has {len(rows)} rows)")
    ras = tuple(float(rows[row][k]) for k in ("centroid_r", "centroid_a", "centroid_s"))
    for slice_node in _nodes(scene, "vtkMRMLSliceNode"):
        slice_node.JumpSliceByCentering(*ras)
    return ras


# --- results to scene --------------------------------------------------------------------------------
@dataclass
class SceneResults:
    volume: object
    segmentation: object
    table: object
    lines: list
    patient_status: str


def load_results(scene, result_dir: str | os.PathLike, volume_node) -> SceneResults:
    """Loads an `llnassist analyze` output folder onto `volume_node` in the scene."""
    d = Path(result_dir)
    for name in ("segmentation.seg.nrrd", "nodes.json"):
        if not (d / name).is_file():
            raise InputError(f"{d} lacks {name}; give a folder written by `llnassist analyze`")
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "LLNAssist segmentation")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(d / "segmentation.seg.nrrd"))
    if not storage.ReadData(seg):
        raise InputError(f"{d / 'segmentation.seg.nrrd'} could not be read; run `llnassist analyze` again")
    scene.RemoveNode(storage)  # the scene's own storage is set when it is saved
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    seg.CreateDefaultDisplayNodes()
    summary_path = d / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    # the model's own notice (a site model's differs); an older result without one gets the bundled model's
    seg.SetAttribute(ATTR_MODEL_NOTICE, summary.get("notice", C.SYNTHETIC_MODEL_NOTICE))
    notice = summary.get("domain", {}).get("notice")
    if notice:
        seg.SetAttribute(ATTR_OUT_OF_DOMAIN, notice)
    if summary.get("model"):
        seg.SetAttribute(ATTR_MODEL, json.dumps(summary["model"]))
    nodes = json.loads((d / "nodes.json").read_text(encoding="utf-8"))
    # summary.json is written last (it marks a complete result); the report renders before it.
    status = "positive" if any(n["dl_status"] == "positive" for n in nodes) else "negative"
    for sid in region_segment_ids(seg):
        _set_region_display(seg, sid)
    for sid in node_segment_ids(seg):
        mask = segment_mask(seg, sid, volume_node)
        seg.GetSegmentation().GetSegment(sid).SetTag(C.TAG_MASK_HASH, _mask_hash(mask))
    rows = []
    for n in nodes:
        _add_line(scene, n["node_id"], "long", n["long_axis_ras"], n["long_axis_mm"], n["dl_status"])
        _add_line(scene, n["node_id"], "short", n["short_axis_ras"], n["short_axis_mm"], n["dl_status"])
        rows.append({**{k: n[k] for k in C.NODES_CSV_COLUMNS}, "provenance": C.PROVENANCE_AUTOMATIC,
                     "status_source": "model"})
    table = _write_table(scene, rows)
    seg.SetAttribute(ATTR_PATIENT_STATUS, status)
    seg.SetAttribute(ATTR_HIGHEST_ID, str(max([n["node_id"] for n in nodes], default=0)))
    return SceneResults(volume_node, seg, table, axis_lines(scene), status)


def load_dicom_seg(scene, path: str | os.PathLike, volume_node, name: str = "LLNAssist segmentation (DICOM)"):
    """A DICOM SEG (LLNAssist's, or another tool's) as a segmentation node on `volume_node`: one
    segment per SEG segment, named, coloured and tagged as LLNAssist's own. Read with highdicom
    (slicer-core has no SEG reader) and placed on the volume's grid."""
    from . import dicom_out

    segments = dicom_out.read_seg(path, volume_to_sitk(volume_node))
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    seg_node.CreateDefaultDisplayNodes()
    for s in segments:
        if s["kind"] == "node" and s["node_id"] is not None and s["status"]:
            sid = seg_node.GetSegmentation().AddEmptySegment(f"node_{s['node_id']}", s["label"])
            set_segment_mask(seg_node, sid, s["mask"], volume_node)
            _style_node_segment(seg_node, sid, s["node_id"], s["status"], s["side"] or "", s["region"] or "",
                                s["provenance"], s["mask"])
        elif s["kind"] == "region" and s["region"] and s["side"]:
            sid = seg_node.GetSegmentation().AddEmptySegment(f"region_{s['region']}_{s['side']}", s["label"])
            set_segment_mask(seg_node, sid, s["mask"], volume_node)
            seg = seg_node.GetSegmentation().GetSegment(sid)
            seg.SetColor(*[c / 255 for c in C.LABEL_COLORS[C.REGION_LABEL_FROM_CODE[s["region"]]]])
            seg.SetTag(C.TAG_KIND, "region")
            seg.SetTag(C.TAG_PROVENANCE, s["provenance"])
            seg.SetTag("TerminologyEntry", _terminology_string(s["region"], s["side"]))
            _set_region_display(seg_node, sid)
        else:  # another tool's segment: kept, as a manual segment Recompute will name
            sid = seg_node.GetSegmentation().AddEmptySegment("", s["label"])
            set_segment_mask(seg_node, sid, s["mask"], volume_node)
    return seg_node


def _set_region_display(seg_node, segment_id: str) -> None:
    disp = seg_node.GetDisplayNode()
    if disp is not None:
        # Regions as outlines in slice views (translucent fill renders muddy offscreen and hides
        # the anatomy); translucent in 3D so the nodes inside stay visible.
        disp.SetSegmentVisibility2DFill(segment_id, False)
        disp.SetSegmentOpacity3D(segment_id, C.REGION_OPACITY)


def set_display(seg_node, regions: bool = True, negative: bool = True, positive: bool = True,
                surfaces_3d: bool = False, outline: bool = False, opacity: float = 0.5) -> None:
    """The module's display controls: which segments show, fill or outline, 3D surfaces, opacity."""
    disp = seg_node.GetDisplayNode()
    if disp is None:
        seg_node.CreateDefaultDisplayNodes()
        disp = seg_node.GetDisplayNode()
    sg = seg_node.GetSegmentation()
    for i in range(sg.GetNumberOfSegments()):
        sid, seg = sg.GetNthSegmentID(i), sg.GetNthSegment(i)
        if _tag(seg, C.TAG_KIND) == "region":
            visible = regions
        else:
            visible = positive if _tag(seg, C.TAG_STATUS) == "positive" else negative
        disp.SetSegmentVisibility(sid, visible)
    disp.SetVisibility2DFill(not outline)
    disp.SetVisibility2DOutline(True)
    disp.SetOpacity2DFill(float(opacity))
    disp.SetOpacity3D(float(opacity))
    if surfaces_3d:
        seg_node.CreateClosedSurfaceRepresentation()
    disp.SetVisibility3D(bool(surfaces_3d))


# --- edits back to results ------------------------------------------------------------------------------
def recompute(scene, volume_node, seg_node, post_treatment: bool = False, radiomics: bool = True,
              radiomics_engine: str = "auto") -> SceneResults:
    """Measures every node segment again and updates names, colours, tags, lines, table and the
    patient status. Model segments the user changed become semi-automatic; segments without
    LLNAssist tags are manual; a node without a model status gets the criteria call."""
    from .nodes import extract_nodes, patient_status
    from .radiomics import node_radiomics

    image = volume_to_sitk(volume_node)
    shape = sitk.GetArrayViewFromImage(image).shape
    regions = np.zeros(shape, np.uint8)
    for sid in region_segment_ids(seg_node):
        seg = seg_node.GetSegmentation().GetSegment(sid)
        code = sid.split("_")[1] if sid.startswith("region_") else ""
        label = C.REGION_LABEL_FROM_CODE.get(code)
        if label:
            regions[segment_mask(seg_node, sid, volume_node) & (regions == 0)] = label
    instances = np.zeros(shape, np.int32)
    info = {}
    masks = {}
    for k, sid in enumerate(node_segment_ids(seg_node), start=1):
        seg = seg_node.GetSegmentation().GetSegment(sid)
        mask = segment_mask(seg_node, sid, volume_node)
        if not mask.any():
            continue  # an emptied segment is a deleted node
        masks[k] = mask
        instances[mask] = k
        prov = _provenance(seg, mask)
        old_id = _tag(seg, C.TAG_NODE_ID)
        info[k] = {"segment_id": sid, "provenance": prov, "status": _tag(seg, C.TAG_STATUS) or None,
                   "source": _tag(seg, C.TAG_STATUS_SOURCE), "old_id": int(old_id) if old_id.isdigit() else None}

    def as_img(arr):
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(image)
        return out

    labels_img = as_img(regions)
    statuses = {k: v["status"] for k, v in info.items() if v["status"]}
    nodes = extract_nodes(labels_img, image, post_treatment, min_volume_mm3=0.0, instances=as_img(instances),
                          statuses=statuses) if info else []
    # Keep the ids people have seen; new nodes get numbers never used before in this case, so a
    # deleted node's number never comes back as a different node.
    used = {v["old_id"] for v in info.values() if v["old_id"] is not None}
    highest = seg_node.GetAttribute(ATTR_HIGHEST_ID)
    next_id = max(max(used, default=0), int(highest) if highest and highest.isdigit() else 0) + 1
    _remove_lines(scene)
    canon = _canonical(image)
    rows = []
    for n in sorted(nodes, key=lambda q: (info[q.instance]["old_id"] is None, info[q.instance]["old_id"] or 0)):
        meta = info[n.instance]
        if meta["old_id"] is not None:
            n.node_id = meta["old_id"]
        else:
            n.node_id, next_id = next_id, next_id + 1
        if meta["source"] == "reader" and meta["status"]:
            source = "reader"
        elif meta["status"] and meta["source"] != "criteria" and meta["provenance"] != C.PROVENANCE_MANUAL:
            source = "model"
        else:  # no model call for this node: the size/morphology criteria decide, again on every edit
            source = "criteria"
            n.dl_status = "positive" if n.criteria.get("criteria_positive") else "negative"
        if radiomics:
            n.radiomics = node_radiomics(image, as_img(masks[n.instance].astype(np.uint8)), label=1,
                                         engine=radiomics_engine)
        _style_node_segment(seg_node, meta["segment_id"], n.node_id, n.dl_status, n.side, n.region,
                            meta["provenance"], masks[n.instance])
        seg_node.GetSegmentation().GetSegment(meta["segment_id"]).SetTag(C.TAG_STATUS_SOURCE, source)
        _add_line(scene, n.node_id, "long", index_to_ras(canon, n.axes.long_ends_ijk), n.long_axis_mm, n.dl_status)
        _add_line(scene, n.node_id, "short", index_to_ras(canon, n.axes.short_ends_ijk), n.short_axis_mm,
                  n.dl_status)
        rows.append({**n.row(), "provenance": meta["provenance"], "status_source": source})
    rows.sort(key=lambda r: r["node_id"])
    seg_node.SetAttribute(ATTR_HIGHEST_ID, str(max([r["node_id"] for r in rows] + [next_id - 1])))
    table = _write_table(scene, rows)
    status = patient_status(nodes)
    seg_node.SetAttribute(ATTR_PATIENT_STATUS, status)
    return SceneResults(volume_node, seg_node, table, axis_lines(scene), status)


def delete_node(scene, volume_node, seg_node, node_id: int, **kw) -> SceneResults:
    for sid in node_segment_ids(seg_node):
        if _tag(seg_node.GetSegmentation().GetSegment(sid), C.TAG_NODE_ID) == str(node_id):
            seg_node.GetSegmentation().RemoveSegment(sid)
            return recompute(scene, volume_node, seg_node, **kw)
    raise InputError(f"node {node_id} is not in the segmentation")


def set_status(scene, volume_node, seg_node, node_id: int, status: str, **kw) -> SceneResults:
    """A reader's call on a node (positive/negative), kept through later edits."""
    if status not in C.LABEL_FROM_STATUS:
        raise InputError(f"status {status!r} must be positive or negative")
    for sid in node_segment_ids(seg_node):
        seg = seg_node.GetSegmentation().GetSegment(sid)
        if _tag(seg, C.TAG_NODE_ID) == str(node_id):
            seg.SetTag(C.TAG_STATUS, status)
            seg.SetTag(C.TAG_STATUS_SOURCE, "reader")
            return recompute(scene, volume_node, seg_node, **kw)
    raise InputError(f"node {node_id} is not in the segmentation")


def click_to_segment(scene, volume_node, seg_node, ras, **kw) -> tuple[str, SceneResults]:
    """Adds the node under a clicked RAS point as a semi-automatic segment, then recomputes."""
    from .clickseg import segment_at

    image = volume_to_sitk(volume_node)
    mask = sitk.GetArrayFromImage(segment_at(image, ras)).astype(bool)
    for sid in node_segment_ids(seg_node):  # a click inside an existing node selects it instead
        if segment_mask(seg_node, sid, volume_node)[mask].mean() > 0.5:
            raise InputError("that point is inside an existing node; edit its segment with the Segment Editor")
    sid = seg_node.GetSegmentation().AddEmptySegment("", "new node", [1.0, 1.0, 0.0])
    set_segment_mask(seg_node, sid, mask, volume_node)
    seg = seg_node.GetSegmentation().GetSegment(sid)
    seg.SetTag(C.TAG_KIND, "node")
    seg.SetTag(C.TAG_PROVENANCE, C.PROVENANCE_SEMI_AUTOMATIC)
    return sid, recompute(scene, volume_node, seg_node, **kw)


# --- files --------------------------------------------------------------------------------------------
def save_mrb(scene, path: str | os.PathLike) -> Path:
    """Writes the scene (volume, segmentation, lines, table) to a Medical Reality Bundle."""
    import tempfile

    from .atomic import atomic_path

    path = Path(path)
    for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLMarkupsLineNode", "vtkMRMLTableNode"):
        coll = scene.GetNodesByClass(cls)
        for i in range(coll.GetNumberOfItems()):
            n = coll.GetItemAsObject(i)
            if n.GetStorageNode() is None:
                n.AddDefaultStorageNode()
    root = scene.GetRootDirectory()
    with tempfile.TemporaryDirectory(prefix="llnassist-mrb-") as work, atomic_path(path) as tmp:
        scene.SetRootDirectory(work)
        from .imageio import quiet_native_output

        try:
            with quiet_native_output(1):  # the zip writer prints every file it adds
                ok = scene.WriteToMRB(str(tmp))
        finally:  # the work folder is deleted; the scene's own root must not point there
            scene.SetRootDirectory(root)
        if not ok:
            raise InputError(f"could not write {path}; check the folder is writable")
    return path


def mark_reviewed(seg_node, reader: str, when: Optional[str] = None) -> None:
    """Marks the case as reviewed (and corrected) by `reader`. Every segment carries the mark, so a
    saved `.seg.nrrd` or `.mrb` tells `llnassist dataset export` who reviewed it."""
    import datetime as _dt

    reader = " ".join(str(reader or "").split())
    if not reader:
        raise InputError("say who reviewed the case (reader id)")
    when = when or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    sg = seg_node.GetSegmentation()
    for i in range(sg.GetNumberOfSegments()):
        seg = sg.GetNthSegment(i)
        seg.SetTag(C.TAG_REVIEWED_BY, reader)
        seg.SetTag(C.TAG_REVIEWED_AT, when)
    seg_node.SetAttribute(C.TAG_REVIEWED_BY, reader)


def reviewed_by(seg_node) -> Optional[str]:
    """The reviewer if every segment carries the same mark (a segment added after review has none)."""
    sg = seg_node.GetSegmentation()
    marks = {_tag(sg.GetNthSegment(i), C.TAG_REVIEWED_BY) for i in range(sg.GetNumberOfSegments())}
    return marks.pop() if len(marks) == 1 and "" not in marks else None


def labels_from_segmentation(seg_node, volume_node) -> np.ndarray:
    """The segmentation as a (k, j, i) label map with the conventions' values on the volume's grid:
    regions first, nodes on top. A segment that is not an LLNAssist label is refused."""
    from .dataset import _segment_label

    sg = seg_node.GetSegmentation()
    specs = []
    for i in range(sg.GetNumberOfSegments()):
        sid, seg = sg.GetNthSegmentID(i), sg.GetNthSegment(i)
        info = {"id": sid, "name": seg.GetName(),
                "tags": {C.TAG_KIND: _tag(seg, C.TAG_KIND), C.TAG_STATUS: _tag(seg, C.TAG_STATUS) or None}}
        value, _ = _segment_label(info)
        if value is None:
            raise InputError(f"segment {seg.GetName()!r} is not an LLNAssist label; run Recompute (it names new "
                             "nodes) or delete it")
        specs.append((value in C.NODE_LABELS, value, sid))
    dims = volume_node.GetImageData().GetDimensions()
    out = np.zeros(dims[::-1], np.uint8)
    for _, value, sid in sorted(specs):
        out[segment_mask(seg_node, sid, volume_node)] = value
    return out


def save_reviewed_case(scene, volume_node, seg_node, folder: str | os.PathLike, reader: str) -> dict:
    """A reviewed case for a site model: marks it reviewed by `reader`, then writes `case.mrb` (the
    scene, for later correction) and `labels.nii.gz` (the label map on the image's grid)."""
    from .atomic import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = labels_from_segmentation(seg_node, volume_node)  # refuses unnamed segments before marking
    mark_reviewed(seg_node, reader)
    ref = volume_to_sitk(volume_node)
    img = sitk.GetImageFromArray(labels)
    img.CopyInformation(ref)
    with atomic_path(folder / "labels.nii.gz") as tmp:
        sitk.WriteImage(img, str(tmp), True)
    mrb = save_mrb(scene, folder / "case.mrb")
    return {"mrb": str(mrb), "labels": str(folder / "labels.nii.gz"), "reviewed_by": reviewed_by(seg_node)}


def scene_result(scene, volume_node, seg_node, reader: Optional[str] = None, post_treatment: bool = False,
                 radiomics: bool = True, radiomics_engine: str = "auto"):
    """The scene's current (corrected) result as the one value the writers take
    (results.AnalysisResult): regions and nodes from the segments, each node's id, status and
    provenance from its tags (a model segment the user changed is semi-automatic, one without
    LLNAssist tags manual), the reader as the observer."""
    from . import inputs
    from .body import body_mask
    from .imageio import to_axial_canonical
    from .nodes import extract_nodes, patient_status
    from .pipeline import _region_side_volume, versions
    from .radiomics import node_radiomics
    from .results import AnalysisResult

    image = volume_to_sitk(volume_node)
    labels_arr = labels_from_segmentation(seg_node, volume_node)  # refuses segments that are not labels
    regions = np.where(np.isin(labels_arr, C.REGION_LABELS), labels_arr, 0).astype(np.uint8)
    instances = np.zeros(labels_arr.shape, np.int32)
    statuses, ids, prov, masks = {}, {}, {}, {}
    for k, sid in enumerate(node_segment_ids(seg_node), start=1):
        seg = seg_node.GetSegmentation().GetSegment(sid)
        mask = segment_mask(seg_node, sid, volume_node)
        if not mask.any():
            continue
        instances[mask], masks[k] = k, mask
        statuses[k] = _tag(seg, C.TAG_STATUS) or None
        ids[k] = _tag(seg, C.TAG_NODE_ID)
        prov[k] = _provenance(seg, mask)
    if any(not ids[k].isdigit() or not statuses[k] for k in ids):
        raise InputError("a node segment has no LLNAssist id or status yet; press Recompute first")

    def as_img(arr):
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(image)
        return out

    nodes = extract_nodes(as_img(regions), image, post_treatment, min_volume_mm3=0.0, instances=as_img(instances),
                          statuses={k: v for k, v in statuses.items() if v}) if ids else []
    for n in nodes:
        n.node_id = int(ids[n.instance])
        if radiomics:
            n.radiomics = node_radiomics(image, as_img(masks[n.instance].astype(np.uint8)), label=1,
                                         engine=radiomics_engine)
    nodes.sort(key=lambda q: q.node_id)
    labels = as_img(labels_arr)
    canon = to_axial_canonical(image)
    body = body_mask(sitk.GetArrayViewFromImage(canon))
    lab_canon = sitk.GetArrayFromImage(to_axial_canonical(labels))
    left = _region_side_volume(lab_canon, canon, body)
    model = json.loads(seg_node.GetAttribute(ATTR_MODEL) or "{}")
    summary = {"patient_status": patient_status(nodes), "n_nodes": len(nodes),
               "n_positive": sum(n.dl_status == "positive" for n in nodes), "model": model,
               "domain": ({"notice": seg_node.GetAttribute(ATTR_OUT_OF_DOMAIN)}
                          if seg_node.GetAttribute(ATTR_OUT_OF_DOMAIN) else {}),
               "corrected_by": reader, "versions": versions()}
    source = inputs.LoadedInput(image, {"kind": "scene", "volume": volume_node.GetName()})
    result = AnalysisResult(image, canon, labels, lab_canon, left, nodes, summary, {}, source,
                            observer={"reader": reader} if reader else None)
    result.extra["provenance"] = {int(ids[k]): prov[k] for k in ids}
    return result


def export_dicom(scene, volume_node, seg_node, reference_files: list, folder: str | os.PathLike,
                 reader: str, **kw) -> dict:
    """The corrected result as DICOM SEG + SR in `folder` (for Slicer's DICOM database), referencing
    the series the volume was loaded from (`reference_files`, any order), the reader as observer."""
    from . import dicom_out

    if not reader or not reader.strip():
        raise InputError("give your reader id: the SEG and SR name who corrected the result")
    result = scene_result(scene, volume_node, seg_node, reader.strip(), **kw)
    result.source.dicom_headers = dicom_out.headers_for_grid(reference_files, result.image)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = dicom_out.write(result, folder)
    if not info or not info.get("written"):
        raise InputError(f"no DICOM SEG/SR written: {result.summary['dicom']['reason']}")
    return info


def load_mrb(path: str | os.PathLike, cache_dir: Optional[str] = None):
    """A new scene read from an `.mrb` file."""
    import tempfile

    if not Path(path).is_file():
        raise InputError(f"{path} does not exist; check the path")
    scene = new_scene()
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(cache_dir or tempfile.mkdtemp(prefix="llnassist-mrb-"))
    scene.SetCacheManager(cache)
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(cache)
    scene.SetDataIOManager(io_manager)
    if not scene.ReadFromMRB(str(path)):
        raise InputError(f"{path} is not a readable Slicer scene bundle (.mrb)")
    return scene


# --- rendering ---------------------------------------------------------------------------------------------
def render_key_image(scene, volume_node, centre_ras, path: str | os.PathLike, size: int = 400,
                     field_of_view_mm: float = 80.0, geometry: Optional[dict] = None) -> Path:
    """A PNG of a real Slicer axial slice view (background volume, segments, lines) centred on a
    point, rendered offscreen (EGL with Mesa where there is no display). `geometry` receives
    "xy_to_ras", the view's 4x4 pixel (origin bottom left) to RAS matrix."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    app = _app_logic(scene)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(0)  # translucent segments vanish with multisampling offscreen (DESIGN.md)
    window.SetSize(size, size)
    renderer = vtk.vtkRenderer()
    renderer.GetActiveCamera().ParallelProjectionOn()
    window.AddRenderer(renderer)
    # The markups widgets need an interactor even when nobody interacts.
    interactor = vtk.vtkRenderWindowInteractor()
    interactor.SetRenderWindow(window)
    interactor.Initialize()
    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(app)
    for manager in ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLMarkupsDisplayableManager"):
        if not factory.IsDisplayableManagerRegistered(manager):
            factory.RegisterDisplayableManager(manager)
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.Initialize(factory, renderer)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app)
    logic.SetMRMLScene(scene)
    app.GetSliceLogics().AddItem(logic)
    slice_node = None
    try:
        # A view of its own for each image, removed afterwards: the user's views stay untouched.
        slice_node = logic.AddSliceNode(f"LLNAssistKey{next(_RENDER_COUNTER)}")
        group.SetMRMLDisplayableNode(slice_node)
        logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_node.GetID())
        slice_node.SetOrientation("Axial")
        logic.ResizeSliceNode(size, size)
        logic.FitSliceToBackground()
        slice_node.JumpSliceByCentering(*[float(v) for v in centre_ras])
        fov = slice_node.GetFieldOfView()
        slice_node.SetFieldOfView(field_of_view_mm, field_of_view_mm, fov[2])
        logic.SnapSliceOffsetToIJK()
        if geometry is not None:
            m = slice_node.GetXYToRAS()
            geometry["xy_to_ras"] = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
        mapper = vtk.vtkImageMapper()
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        mapper.SetInputConnection(logic.GetImageDataConnection())
        actor = vtk.vtkActor2D()
        actor.SetMapper(mapper)
        actor.GetProperty().SetDisplayLocationToBackground()
        renderer.AddViewProp(actor)
        window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(window)
        grab.ReadFrontBufferOff()
        grab.Update()
        from .atomic import atomic_path

        with atomic_path(path) as tmp:
            writer = vtk.vtkPNGWriter()
            writer.SetFileName(str(tmp))
            writer.SetInputConnection(grab.GetOutputPort())
            writer.Write()
    finally:
        group.SetMRMLDisplayableNode(None)
        app.GetSliceLogics().RemoveItem(logic)
        if slice_node is not None:
            composite = logic.GetSliceCompositeNode()
            logic.SetMRMLScene(None)
            scene.RemoveNode(slice_node)
            if composite is not None:
                scene.RemoveNode(composite)
        window.Finalize()
    return Path(path)


def read_png(path: str | os.PathLike) -> np.ndarray:
    """(rows, cols, channels) uint8 array of a PNG, top row first."""
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    img = reader.GetOutput()
    dims = img.GetDimensions()
    arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(dims[1], dims[0], -1)
    return arr[::-1]


def ras_to_view_px(xy_to_ras: np.ndarray, ras, height: int) -> list:
    """RAS points -> pixel (x, y) in a rendered slice view, y from the top (as in the PNG)."""
    pts = np.column_stack([np.atleast_2d(np.asarray(ras, float)), np.ones(len(np.atleast_2d(ras)))])
    xy = (np.linalg.inv(xy_to_ras) @ pts.T).T
    return [[float(x), float(height - y)] for x, y in xy[:, :2]]


def report_images(image: sitk.Image, result_dir: str | os.PathLike, size: int = 300,
                  node_fov_mm: float = 50.0, overview_fov_mm: float = 220.0) -> tuple:
    """Key images for the HTML report from real Slicer slice views: {node_id: report.KeyImage} with
    the axis end points in pixels (the report draws the lines and labels), and an overview
    (centred on the node with the largest short axis, or on the image without nodes)."""
    import base64
    import tempfile

    from .imageio import write_image
    from .report import KeyImage

    nodes = json.loads((Path(result_dir) / "nodes.json").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="llnassist-render-") as work:
        vol_path = Path(work) / "image.nrrd"
        write_image(image, vol_path, compress=False)
        scene = new_scene()
        try:
            volume = load_volume(scene, vol_path)
            results = load_results(scene, result_dir, volume)
            set_display(results.segmentation, opacity=0.45)  # regions stay outlines (load_results)
            for ln in results.lines:  # the report draws the axes (and labels that stay in the image)
                ln.GetDisplayNode().SetVisibility(False)

            def shot(centre, fov, px, name, node=None):
                geom: dict = {}
                png = render_key_image(scene, volume, centre, Path(work) / name, size=px, field_of_view_mm=fov,
                                       geometry=geom)
                key = KeyImage(base64.b64encode(png.read_bytes()).decode("ascii"), px, px)
                if node is not None:
                    key.long_px = ras_to_view_px(geom["xy_to_ras"], node["long_axis_ras"], px)
                    key.short_px = ras_to_view_px(geom["xy_to_ras"], node["short_axis_ras"], px)
                return key

            images = {}
            for n in nodes:
                centre = np.mean(np.array(n["long_axis_ras"]), axis=0)
                images[n["node_id"]] = shot(centre, node_fov_mm, size, f"node{n['node_id']}.png", n)
            if nodes:
                big = max(nodes, key=lambda q: q["short_axis_mm"])
                centre = np.mean(np.array(big["long_axis_ras"]), axis=0)
                centre[0] = float(np.mean([q["centroid_r"] for q in nodes]))  # both sides in view
            else:
                bounds = [0.0] * 6
                volume.GetRASBounds(bounds)
                centre = np.array([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2,
                                   (bounds[4] + bounds[5]) / 2])
            overview = shot(centre, overview_fov_mm, 2 * size, "overview.png")
        finally:
            _APP_LOGICS.pop(scene, None)
            scene.Clear(1)
    return images, overview
