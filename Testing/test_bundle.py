"""MONAI bundles (state dict and TorchScript) run through `llnassist analyze --model BUNDLE`.

The bundles are built here as MONAI lays them out (configs/inference.json with the bundle's own
preprocessing and inferer, configs/metadata.json naming the output channels, models/model.pt or
models/model.ts, scripts/). Their network answers with a fixed label map: the phantom's ground
truth carried into the bundle's preprocessed space (RAS orientation) with the channels in another
order and other names than LLNAssist's. So the labels LLNAssist writes must equal the phantom's
truth voxel for voxel on the image's own grid: that proves the label mapping and the inversion of
the bundle's preprocessing, independently of any trained weights.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import run_cli

from LLNAssistLib import conventions as C
from LLNAssistLib import phantom

# the bundle's channels: other order, other names (mapped by llnassist_labels.json)
BUNDLE_CHANNELS = {0: "background", 1: "node_malignant", 2: "node_benign", 3: "ext_iliac", 4: "obturator",
                   5: "int_iliac"}
TO_LLNASSIST = {"node_malignant": C.LABEL_NAMES[C.NODE_POSITIVE], "node_benign": C.LABEL_NAMES[C.NODE_NEGATIVE],
                "ext_iliac": C.LABEL_NAMES[C.EXTERNAL_ILIAC], "obturator": C.LABEL_NAMES[C.OBTURATOR],
                "int_iliac": C.LABEL_NAMES[C.INTERNAL_ILIAC]}

FIXED_NET = '''import torch


class FixedLabels(torch.nn.Module):
    """Answers one fixed label map (as logits) whatever it is shown."""

    def __init__(self, shape: list, channels: int):
        super().__init__()
        self.channels = channels
        self.register_buffer("labels", torch.zeros(shape, dtype=torch.uint8))

    def forward(self, x):
        if x.shape[2:] != self.labels.shape:
            raise RuntimeError("input grid differs from the fixed label map")
        oh = torch.nn.functional.one_hot(self.labels.long(), self.channels).permute(3, 0, 1, 2).float()
        return (oh * 10.0)[None].expand(x.shape[0], -1, -1, -1, -1)
'''

LOAD = [{"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"}]


def _bundle(folder, truth_path, torchscript: bool, mapped: bool = True):
    import importlib.util

    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    lab = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                   Orientationd("image", axcodes="RAS")])({"image": str(truth_path)})["image"][0].numpy()
    to_bundle = {C.NODE_POSITIVE: 1, C.NODE_NEGATIVE: 2, C.EXTERNAL_ILIAC: 3, C.OBTURATOR: 4, C.INTERNAL_ILIAC: 5}
    bundle_lab = np.zeros(lab.shape, np.uint8)
    for v, c in to_bundle.items():
        bundle_lab[lab == v] = c
    (folder / "scripts").mkdir()
    (folder / "scripts" / "__init__.py").write_text("", encoding="utf-8")
    (folder / "scripts" / "fixed.py").write_text(FIXED_NET, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("fixed_net_for_test", folder / "scripts" / "fixed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.FixedLabels(list(bundle_lab.shape), 6)
    net.labels.copy_(torch.from_numpy(bundle_lab))
    config = {"bundle_root": ".", "device": "$torch.device('cpu')",
              "preprocessing": {"_target_": "Compose",
                                "transforms": LOAD + [{"_target_": "NormalizeIntensityd", "keys": "image",
                                                       "nonzero": True}]},
              "inferer": {"_target_": "SimpleInferer"}}
    if torchscript:
        torch.jit.save(torch.jit.script(net), str(folder / "models" / "model.ts"))
        shutil.rmtree(folder / "scripts")  # a TorchScript bundle carries its network itself
    else:
        config["network_def"] = {"_target_": "scripts.fixed.FixedLabels", "shape": list(bundle_lab.shape),
                                 "channels": 6}
        torch.save(net.state_dict(), folder / "models" / "model.pt")
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    meta = {"name": "Test LLN bundle", "version": "0.1.0",
            "network_data_format": {"inputs": {"image": {"type": "image", "num_channels": 1}},
                                    "outputs": {"pred": {"type": "image", "num_channels": 6,
                                                         "channel_def": {str(k): v for k, v in
                                                                         BUNDLE_CHANNELS.items()}}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    if mapped:
        (folder / "llnassist_labels.json").write_text(json.dumps(TO_LLNASSIST), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundle")
    phantom.write(phantom.generate(910410, size=200, slices=16, n_nodes=3), d / "case")
    return d / "case"


def _truth(case_dir):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "labels.nii.gz")))


@pytest.mark.parametrize("torchscript", [False, True], ids=["state-dict", "torchscript"])
def test_a_monai_bundle_runs_end_to_end_with_its_labels_mapped(case, tmp_path, torchscript):
    b = _bundle(tmp_path / "bundle", case / "labels.nii.gz", torchscript)
    out = tmp_path / "out"
    run_cli("analyze", case / "image.nii.gz", "--out", out, "--model", b, "--no-report-images", "--quiet", check_rc=0)
    got = sitk.ReadImage(str(out / "labels.nii.gz"))
    ref = sitk.ReadImage(str(case / "labels.nii.gz"))
    assert got.GetSize() == ref.GetSize() and np.allclose(got.GetDirection(), ref.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(got), _truth(case))  # every voxel, on the image's grid
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["model"]["kind"] == "monai_bundle" and summary["model"]["verified"] is False
    truth = json.loads((case / "truth.json").read_text(encoding="utf-8"))
    assert summary["patient_status"] == truth["patient_status"]
    with open(out / "nodes.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(truth["nodes"])
    assert sorted(r["dl_status"] for r in rows) == sorted(n["status"] for n in truth["nodes"])
    assert {"node_id", "side", "region", "short_axis_mm", "long_axis_mm"} <= set(rows[0])


def test_a_bundle_without_the_needed_labels_is_refused_unless_mapped(case, tmp_path):
    b = _bundle(tmp_path / "bundle", case / "labels.nii.gz", torchscript=True, mapped=False)
    p = run_cli("analyze", case / "image.nii.gz", "--out", tmp_path / "out", "--model", b, "--quiet", check_rc=2)
    assert "llnassist_labels.json" in p.stderr and "internal iliac region" in p.stderr
    assert not (tmp_path / "out").exists()


def test_an_installed_bundle_is_held_to_its_checksums(case, tmp_path, monkeypatch):
    monkeypatch.setenv("LLNASSIST_MODELS", str(tmp_path / "models"))
    b = _bundle(tmp_path / "bundle", case / "labels.nii.gz", torchscript=False)
    run_cli("models", "add", b, "--id", "site-bundle", check_rc=0)
    inst = tmp_path / "models" / "site-bundle"
    man = json.loads((inst / "llnassist.json").read_text(encoding="utf-8"))
    assert man["verified"] is True and set(man["files"]) == {
        "configs/inference.json", "configs/metadata.json", "models/model.pt", "scripts/__init__.py", "scripts/fixed.py"}
    p = run_cli("models", "list", check_rc=0)
    assert "site-bundle" in p.stdout and "monai_bundle" in p.stdout
    run_cli("analyze", case / "image.nii.gz", "--out", tmp_path / "ok", "--model", "site-bundle", "--no-report-images",
            "--quiet", check_rc=0)
    assert json.loads((tmp_path / "ok" / "summary.json").read_text(encoding="utf-8"))["model"]["verified"] is True
    # a script edited after registration (code that would run) is refused before anything runs
    with open(inst / "scripts" / "fixed.py", "a", encoding="utf-8") as f:
        f.write("\nimport os  # edited\n")
    p = run_cli("analyze", case / "image.nii.gz", "--out", tmp_path / "bad", "--model", "site-bundle", "--quiet",
                check_rc=2)
    assert "scripts/fixed.py fails its checksum" in p.stderr.replace("\\", "/")
    assert not (tmp_path / "bad").exists()


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_bundle_whose_weights_carry_an_object_is_refused_without_running_it(case, tmp_path):
    b = _bundle(tmp_path / "bundle", case / "labels.nii.gz", torchscript=False)
    marker = tmp_path / "ran"
    torch.save({"labels": _Payload(marker)}, b / "models" / "model.pt")
    p = run_cli("analyze", case / "image.nii.gz", "--out", tmp_path / "out", "--model", b, "--quiet", check_rc=2)
    assert "not model data" in p.stderr and "Traceback" not in p.stderr
    assert not marker.exists()


def _dice(a, b):
    s = int(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / s


def test_evaluate_on_labelled_cases_against_hand_computed_figures(case, tmp_path, monkeypatch):
    """The bundle answers the phantom's truth. Reference A drops one node (the model then has one
    false positive), reference B calls a positive node negative (one status error): every figure
    of `llnassist evaluate --cases` is computed here by hand from the label maps."""
    from scipy import ndimage

    monkeypatch.setenv("LLNASSIST_MODELS", str(tmp_path / "models"))
    b = _bundle(tmp_path / "bundle", case / "labels.nii.gz", torchscript=True)
    truth_img = sitk.ReadImage(str(case / "labels.nii.gz"))
    truth = sitk.GetArrayFromImage(truth_img)
    comp, n = ndimage.label(np.isin(truth, C.NODE_LABELS))
    assert n >= 2
    pos = [k for k in range(1, n + 1) if (truth[comp == k] == C.NODE_POSITIVE).mean() > 0.5]
    assert pos, "the phantom needs a positive node"
    ref_a = truth.copy()
    dropped = next(k for k in range(1, n + 1) if k != pos[0])
    ref_a[comp == dropped] = 0
    ref_b = truth.copy()
    ref_b[comp == pos[0]] = C.NODE_NEGATIVE
    for name, arr in (("a", ref_a), ("b", ref_b)):
        img = sitk.GetImageFromArray(arr)
        img.CopyInformation(truth_img)
        sitk.WriteImage(img, str(tmp_path / f"ref_{name}.nii.gz"))
    (tmp_path / "cases.csv").write_text(f"case_id,image,labels\nA,{case / 'image.nii.gz'},ref_a.nii.gz\n"
                                        f"B,{case / 'image.nii.gz'},ref_b.nii.gz\n", encoding="utf-8")
    # an unregistered model has no manifest to write into: refused before any work
    p = run_cli("evaluate", "--model", b, "--cases", tmp_path / "cases.csv", "--write-manifest", "--quiet", check_rc=2)
    assert "models add" in p.stderr
    run_cli("models", "add", b, "--id", "eval-bundle", check_rc=0)
    p = run_cli("evaluate", "--model", "eval-bundle", "--cases", tmp_path / "cases.csv", "--write-manifest",
                "--out", tmp_path / "eval.json", "--quiet", check_rc=0)
    s = json.loads((tmp_path / "eval.json").read_text(encoding="utf-8"))["summary"]
    assert s["cases"] == 2 and s["truth_nodes"] == 2 * n - 1 and s["refused_cases"] == 0
    assert s["detection_sensitivity"] == 1.0
    assert s["false_positives_per_case"] == 0.5 and s["max_false_positives_in_a_case"] == 1
    assert s["node_status_accuracy"] == round((2 * n - 2) / (2 * n - 1), 4)
    assert s["median_short_axis_error_mm"] <= 0.005  # same voxels, same code; nodes.json keeps 2 decimals
    patient_b = "positive" if len(pos) > 1 else "negative"
    assert s["patient_status_accuracy"] == (1.0 if patient_b == "positive" else 0.5)
    for v in C.NODE_LABELS:
        want = np.mean([_dice(ref == v, truth == v) for ref in (ref_a, ref_b) if (ref == v).any() or
                        (truth == v).any()])  # a label in neither has no Dice
        assert s["dice"][C.LABEL_NAMES[v]] == pytest.approx(want, abs=1e-4)
    assert s["dice"][C.LABEL_NAMES[C.OBTURATOR]] == 1.0
    lo, hi = s["ci95"]["false_positives_per_case"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    assert s["data"]["kind"] == "labelled cases"
    man = json.loads((tmp_path / "models" / "eval-bundle" / "llnassist.json").read_text(encoding="utf-8"))
    assert man["evaluation"]["false_positives_per_case"] == 0.5
    listed = run_cli("models", "list", check_rc=0).stdout
    assert "2 labelled cases: node detection 1.000, 0.50 false positives" in listed
    # the evaluation lives in the manifest, outside the checksummed files: the model still runs
    run_cli("analyze", case / "image.nii.gz", "--out", tmp_path / "ok", "--model", "eval-bundle",
            "--no-report-images", "--quiet", check_rc=0)


def test_labels_equal_monais_own_run_of_the_bundle(case, tmp_path):
    """A bundle as the MONAI model zoo writes one (a BasicUNet state dict, Spacingd to 1.2 x 1.2 x 5 mm,
    a sliding-window inferer, postprocessing softmax -> Invertd -> argmax -> SaveImaged, a
    SupervisedEvaluator) run by MONAI itself (`python -m monai.bundle run`) and by LLNAssist's
    loader: the same labels on every voxel. The network is untrained (seeded), so its labels are
    arbitrary and everywhere - a harder comparison than anatomy."""
    import subprocess
    import sys

    from monai.networks.nets import BasicUNet

    from LLNAssistLib.model import bundle

    b = tmp_path / "zoo"
    (b / "configs").mkdir(parents=True)
    (b / "models").mkdir()
    torch.manual_seed(0)
    features = [8, 8, 16, 16, 32, 8]
    torch.save(BasicUNet(spatial_dims=3, in_channels=1, out_channels=6, features=features).state_dict(),
               b / "models" / "model.pt")
    pre = {"_target_": "Compose", "transforms": LOAD + [
        {"_target_": "Spacingd", "keys": "image", "pixdim": [1.2, 1.2, 5.0], "mode": "bilinear"},
        {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True}]}
    cfg = {"imports": ["$import glob"], "bundle_root": ".", "output_dir": "$@bundle_root + '/eval'",
           "dataset_dir": ".", "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
           "device": "$torch.device('cpu')",
           "network_def": {"_target_": "BasicUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 6,
                           "features": features},
           "network": "$@network_def.to(@device)", "preprocessing": pre,
           "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                       "transform": "@preprocessing"},
           "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 0},
           "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [64, 64, 16], "sw_batch_size": 2,
                       "overlap": 0.25},
           "postprocessing": {"_target_": "Compose", "transforms": [
               {"_target_": "Activationsd", "keys": "pred", "softmax": True},
               {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                "nearest_interp": False, "to_tensor": True},
               {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
               {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                "resample": False, "separate_folder": False}]},
           "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                         "load_dict": {"model": "@network"}}],
           "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                         "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                         "val_handlers": "@handlers"},
           "run": ["$@evaluator.run()"]}
    (b / "configs" / "inference.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    channels = {str(v): C.LABEL_NAMES[v] for v in range(C.NUM_CLASSES)}
    (b / "configs" / "metadata.json").write_text(json.dumps(
        {"name": "zoo", "version": "0.1.0", "network_data_format": {
            "inputs": {"image": {"num_channels": 1}},
            "outputs": {"pred": {"num_channels": 6, "channel_def": channels}}}}), encoding="utf-8")
    (tmp_path / "in").mkdir()
    shutil.copyfile(case / "image.nii.gz", tmp_path / "in" / "image.nii.gz")
    p = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                        "--dataset_dir", str(tmp_path / "in"), "--bundle_root", str(b)], cwd=b,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    ref = sitk.ReadImage(str(b / "eval" / "image_seg.nii.gz"))
    image = sitk.ReadImage(str(case / "image.nii.gz"))
    stats = {}
    ours = bundle.segment(image, bundle.load(b, "cpu"), stats=stats)
    assert stats["postprocessing"] == "the bundle's own"
    assert ref.GetSize() == image.GetSize() and np.allclose(ref.GetDirection(), image.GetDirection())
    ref_arr, ours_arr = sitk.GetArrayFromImage(ref).astype(np.uint8), sitk.GetArrayFromImage(ours)
    assert len(np.unique(ref_arr)) >= 3  # the comparison is not between two blank maps
    assert np.array_equal(ours_arr, ref_arr)
