"""Defects of the Slicer module that can be tested outside the Slicer application (issue: the
extension must install and work in real Slicer 5.8-5.12), each against real slicer-core MRML,
a real child process or the real import graph."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import SimpleITK as sitk
from conftest import REPO

from LLNAssistLib import mrml_bridge as B


def test_exporting_the_input_keeps_the_users_volume_pointing_at_its_own_file(loaded, small_case, tmp_path):
    scene, vol, _res, _out = loaded
    case = small_case
    before = vol.GetStorageNode().GetFileName()
    written = B.export_volume(vol, tmp_path / "input.nrrd")
    assert vol.GetStorageNode().GetFileName() == before == str(case / "image.nii.gz")
    a, b = sitk.ReadImage(str(case / "image.nii.gz")), sitk.ReadImage(str(written))
    assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetSpacing(), b.GetSpacing())
    assert np.allclose(a.GetDirection(), b.GetDirection())


def test_placement_node_is_recreated_after_the_scene_is_cleared():
    scene = B.new_scene()
    node = B.placement_node(scene, None, "LLNAssist click")
    assert B.placement_node(scene, node) is node  # reused while it is in the scene
    scene.Clear(0)
    assert node.GetScene() is None
    fresh = B.placement_node(scene, node, "LLNAssist click")
    assert fresh is not node and scene.GetNodeByID(fresh.GetID()) is fresh
    B.start_placement(scene, fresh)
    selection = scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
    assert selection.GetActivePlaceNodeID() == fresh.GetID()


def test_unticking_place_ends_place_mode():
    scene = B.new_scene()
    node = B.placement_node(scene)
    B.start_placement(scene, node)
    assert B.placing(scene)
    interaction = scene.GetFirstNodeByClass("vtkMRMLInteractionNode")
    assert interaction.GetPlaceModePersistence() == 0  # one point, then back
    B.stop_placement(scene)
    assert not B.placing(scene) and interaction.GetCurrentInteractionMode() == interaction.ViewTransform


def test_3d_surfaces_are_not_an_edit_but_a_painted_voxel_is(loaded):
    scene, vol, res, _ = loaded
    seg = res.segmentation
    fired = []
    segmentation = seg.GetSegmentation()
    tags = [segmentation.AddObserver(e, lambda *a: fired.append(a[1])) for e in B.edit_events()]
    B.set_display(seg, surfaces_3d=True)  # what ticking "3D surfaces" does
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")
    assert fired == [], fired
    sid = B.node_segment_ids(seg)[0]
    mask = B.segment_mask(seg, sid, vol)
    k, j, i = (int(x) for x in np.argwhere(mask)[0])
    mask[k, max(j - 2, 0):j + 3, max(i - 2, 0):i + 3] = True
    B.set_segment_mask(seg, sid, mask, vol)
    assert fired, "a change of the labelmap must trigger the recompute"
    for t in tags:
        segmentation.RemoveObserver(t)


def test_saving_a_case_keeps_the_scenes_root_directory(loaded, tmp_path):
    scene, *_ = loaded
    scene.SetRootDirectory(str(tmp_path))
    B.save_mrb(scene, tmp_path / "case.mrb")
    assert scene.GetRootDirectory() == str(tmp_path) and (tmp_path / "case.mrb").is_file()


def test_clearing_a_reading_case_keeps_the_modules_settings(loaded):
    scene, vol, res, _ = loaded
    # the module's parameter node, as the parameter node wrapper stores it (a singleton)
    p = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    p.SetSingletonTag("LLNAssist")
    p.SetParameter("studyLocation", "postgresql://reader@db.example/lln")
    p.SetParameter("readerId", "R1")
    p.SetParameter("opacity", "0.3")
    n_removed = B.clear_case(scene)
    assert n_removed >= 3
    assert p.GetScene() is not None
    assert (p.GetParameter("studyLocation"), p.GetParameter("readerId"), p.GetParameter("opacity")) == \
        ("postgresql://reader@db.example/lln", "R1", "0.3")
    for cls in ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLMarkupsLineNode", "vtkMRMLTableNode"):
        assert scene.GetNodesByClass(cls).GetNumberOfItems() == 0, cls
    # what scene.Clear(0) did before: the settings are gone
    scene.Clear(0)
    assert p.GetParameter("readerId") == ""


_IMPORT_GUARD = r"""
import importlib.abc, json, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "monai"):
            raise ImportError(f"{name} is not installed (first use, before Analyze)")
        return None
sys.meta_path.insert(0, Refuse())
from LLNAssistLib import mrml_bridge as B
scene = B.new_scene()
vol = B.load_volume(scene, sys.argv[1])
res = B.load_results(scene, sys.argv[2], vol)
res = B.recompute(scene, vol, res.segmentation, radiomics=True, radiomics_engine="native")
nid = int(B.table_rows(res.table)[0]["node_id"])
res = B.set_status(scene, vol, res.segmentation, nid, "positive", radiomics=False)
res = B.delete_node(scene, vol, res.segmentation, nid, radiomics=False)
print(json.dumps({"rows": len(B.table_rows(res.table)),
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "monai"))}))
"""


def test_edits_run_without_torch_or_monai(analyzed, small_case):
    """Recompute, mark and delete run in Slicer's GUI process, possibly before PyTorch is installed."""
    out, _ = analyzed
    p = subprocess.run([sys.executable, "-c", _IMPORT_GUARD, str(small_case / "image.nii.gz"), str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["heavy"] == [] and got["rows"] >= 1


def test_crash_log_goes_to_the_platforms_temporary_folder(tmp_path, monkeypatch, capfd):
    """tempfile.gettempdir() (TMPDIR, or TEMP/TMP on Windows), never a hard-coded /tmp."""
    import tempfile

    from LLNAssistLib import cli

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_measure", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "temp").mkdir()
    assert cli.main(["measure", str(tmp_path / "x.nii.gz")]) == 1
    assert "RuntimeError: a bug" in (tmp_path / "temp" / "llnassist-crash.log").read_text(encoding="utf-8")
    assert str(tmp_path / "temp") in capfd.readouterr().err
