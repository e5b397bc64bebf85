"""Site models with nnU-Net v2, with the project's own commands: phantoms exported by `llnassist
dataset export`, a tiny nnU-Net trained by `llnassist train --framework nnunet --plan tiny --epochs 2
--iterations-per-epoch 5 --folds 0` (about 1.5 minutes on 2 CPU cores), then run through `llnassist
analyze --model FOLDER`; its labels are compared with nnU-Net's own predictor on the same image.
Also what must be refused: a tampered checkpoint (checksum), a checkpoint carrying an arbitrary
pickled object (loader), a model without a needed label."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_cli

from LLNAssistLib import conventions as C
from LLNAssistLib import phantom


@pytest.fixture(scope="module")
def site_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("nnunet")
    rows = ["case_id,image,labels,reviewed_by"]
    for k in range(6):
        phantom.write(phantom.generate(910300 + k, size=160, slices=12, n_nodes=2), d / f"p{k}")
        rows.append(f"P{k},p{k}/image.nii.gz,p{k}/labels.nii.gz,R1")
    (d / "cases.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    run_cli("dataset", "export", d / "cases.csv", "--out", d / "raw", "--dataset-id", "601", "--quiet", check_rc=0)
    p = run_cli("train", "--framework", "nnunet", "--dataset", d / "raw" / "Dataset601_LLN", "--out", d / "out",
                "--plan", "tiny", "--epochs", "2", "--iterations-per-epoch", "5", "--folds", "0", "--device", "cpu",
                "--synthetic", "--processes", "1", check_rc=0, timeout=1200)
    folder = d / "out" / "results" / "Dataset601_LLN" / "LLNAssistTrainer__nnUNetPlans__3d_fullres"
    assert f"trained model: {folder}" in p.stdout
    phantom.write(phantom.generate(910310, size=160, slices=12, n_nodes=2), d / "unseen")
    return folder, d


def test_training_writes_a_manifest_nnunet_can_use(site_model):
    from LLNAssistLib.model.checkpoint import load_checkpoint
    from LLNAssistLib.model.manifest import sha256_file

    folder, _ = site_model
    man = json.loads((folder / "llnassist.json").read_text(encoding="utf-8"))
    assert man["kind"] == "nnunet" and man["configuration"] == "3d_fullres" and man["folds"] == [0]
    assert man["checkpoints"] == {"fold_0/checkpoint_final.pth": sha256_file(folder / "fold_0" /
                                                                              "checkpoint_final.pth")}
    assert man["training_data"]["synthetic"] is True and man["training_data"]["n_cases"] == 6
    assert man["training"]["loss"] == {"dice": 0.7, "cross_entropy": 0.3}
    assert set(man["evaluation"]["cross_validation_dice"]["0"]) == {C.LABEL_NAMES[v] for v in range(1, 6)}
    ck = load_checkpoint(folder / "fold_0" / "checkpoint_final.pth")  # weights_only with the numpy allow-list
    assert ck["trainer_name"] == "nnUNetTrainerNoMirroring" and ck["inference_allowed_mirroring_axes"] is None
    assert ck["llnassist_trainer"] == {"class": "LLNAssistTrainer", "dice_weight": 0.7, "ce_weight": 0.3}
    assert ck["current_epoch"] == 2
    # the patient-level folds of the export are the ones nnU-Net trained with
    exported = json.loads((folder.parents[2] / "preprocessed" / "Dataset601_LLN" / "splits_final.json")
                          .read_text(encoding="utf-8"))
    raw = json.loads((folder.parents[3] / "raw" / "Dataset601_LLN" / "splits_final.json").read_text(encoding="utf-8"))
    assert exported == raw


def _nnunet_reference(folder, image_path):
    """nnU-Net's own predictor (mirroring off, as the model was trained), on the same image."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=torch.device("cpu"),
                           perform_everything_on_device=False, verbose=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(folder), use_folds=None)
    img = sitk.ReadImage(str(image_path))
    arr = sitk.GetArrayFromImage(img).astype(np.float32)[None]
    return pred.predict_single_npy_array(arr, {"spacing": list(img.GetSpacing())[::-1]}, None, None, False)


def test_analyze_with_the_site_model_gives_nnunets_own_labels(site_model, tmp_path):
    folder, d = site_model
    out = tmp_path / "out"
    # a two-epoch model is not anatomy: --force, and every output then says so
    run_cli("analyze", d / "unseen" / "image.nii.gz", "--model", folder, "--out", out, "--device", "cpu", "--force",
            "--no-radiomics", "--no-report-images", check_rc=0)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["model"]["kind"] == "nnunet" and summary["model"]["id"] == "site-dataset601_lln-3d_fullres"
    assert summary["model"]["synthetic_training_data"] is True and "Dataset601_LLN" in summary["model"]["training_data"]
    with open(out / "nodes.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    assert rows and list(rows[0]) == list(C.NODES_CSV_COLUMNS)
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    ref = _nnunet_reference(folder, d / "unseen" / "image.nii.gz")
    # dataset.json names the labels as the conventions do, so the values are the same
    assert ref.shape == ours.shape and (ref > 0).mean() > 0.05  # the reference calls plenty: not a vacuous match
    agreement = float((ref == ours).mean())
    assert agreement >= 0.995, agreement


def _copy_model(folder, dest):
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("checkpoint_best.pth", "validation"))
    return dest


def test_a_tampered_checkpoint_is_refused_by_its_checksum(site_model, tmp_path):
    folder, d = site_model
    bad = _copy_model(folder, tmp_path / "model")
    ck = bad / "fold_0" / "checkpoint_final.pth"
    data = bytearray(ck.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ck.write_bytes(bytes(data))
    p = run_cli("analyze", d / "unseen" / "image.nii.gz", "--model", bad, "--out", tmp_path / "o", "--force",
                check_rc=2)
    assert "fails its checksum" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(site_model, tmp_path):
    import torch

    folder, d = site_model
    bad = _copy_model(folder, tmp_path / "model")
    (bad / "llnassist.json").unlink()  # an nnU-Net model from elsewhere: no checksum to stop it first
    marker = tmp_path / "pwned"
    ck = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)  # our own file (test only)
    ck["logging"] = _Evil(marker)
    torch.save(ck, bad / "fold_0" / "checkpoint_final.pth")
    p = run_cli("analyze", d / "unseen" / "image.nii.gz", "--model", bad, "--out", tmp_path / "o", "--force",
                check_rc=2)
    assert "not model data" in p.stderr and "refused" in p.stderr and "Traceback" not in p.stderr
    assert not marker.exists()


def test_a_model_without_a_needed_label_is_refused_unless_mapped(site_model, tmp_path):
    from LLNAssistLib.errors import InputError
    from LLNAssistLib.nnunet.model import validate

    folder, _ = site_model
    other = _copy_model(folder, tmp_path / "model")
    ds = json.loads((other / "dataset.json").read_text(encoding="utf-8"))
    ds["labels"] = {("LN+" if k == "lymph node, positive" else k): v for k, v in ds["labels"].items()}
    (other / "dataset.json").write_text(json.dumps(ds), encoding="utf-8")
    with pytest.raises(InputError, match="no label for 'lymph node, positive'"):
        validate(other)
    (other / "llnassist_labels.json").write_text(json.dumps({"LN+": "lymph node, positive"}), encoding="utf-8")
    assert validate(other)["kind"] == "nnunet"
    # a checkpoint that is not listed in the manifest is refused too
    shutil.copyfile(other / "fold_0" / "checkpoint_final.pth", (other / "fold_1").mkdir() or
                    other / "fold_1" / "checkpoint_final.pth")
    with pytest.raises(InputError, match="not listed"):
        validate(other)


def test_installed_models_are_listed_run_by_id_and_held_to_their_checksums(site_model, tmp_path, monkeypatch):
    folder, d = site_model
    monkeypatch.setenv("LLNASSIST_MODELS", str(tmp_path / "models"))
    # an nnU-Net model from elsewhere (no LLNAssist manifest): installing it records its checksums
    foreign = _copy_model(folder, tmp_path / "foreign")
    (foreign / "llnassist.json").unlink()
    p = run_cli("models", "add", foreign, "--id", "site-foreign", check_rc=0)
    assert "--model site-foreign" in p.stdout
    installed = tmp_path / "models" / "site-foreign"
    assert json.loads((installed / "llnassist.json").read_text(encoding="utf-8"))["checkpoints"]
    run_cli("models", "add", folder, check_rc=0)  # ours, under its manifest's id
    listing = run_cli("models", "list", check_rc=0).stdout
    assert "llnassist-phantom-dynunet25d  [llnassist, bundled" in listing
    assert "site-dataset601_lln-3d_fullres  [nnunet, installed" in listing and "cross-validation mean Dice" in listing
    assert "site-foreign  [nnunet, installed" in listing and "unknown" in listing
    p = run_cli("models", "add", folder, check_rc=2)
    assert "already installed" in p.stderr
    # run by id, like the bundled model
    out = tmp_path / "out"
    run_cli("analyze", d / "unseen" / "image.nii.gz", "--model", "site-dataset601_lln-3d_fullres", "--out", out,
            "--device", "cpu", "--force", "--no-radiomics", "--no-report-images", check_rc=0)
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["model"]["kind"] == "nnunet"
    # the installed copy is held to the checksums recorded when it was added
    ck = installed / "fold_0" / "checkpoint_final.pth"
    data = bytearray(ck.read_bytes())
    data[100] ^= 0xFF
    ck.write_bytes(bytes(data))
    p = run_cli("analyze", d / "unseen" / "image.nii.gz", "--model", "site-foreign", "--out", tmp_path / "o2",
                "--force", check_rc=2)
    assert "fails its checksum" in p.stderr
    assert "removed" in run_cli("models", "remove", "site-foreign", check_rc=0).stdout
    assert "cannot be removed" in run_cli("models", "remove", "llnassist-phantom-dynunet25d", check_rc=2).stderr
    assert "site-foreign" not in run_cli("models", "list", check_rc=0).stdout


def test_skipped_tiles_leave_every_voxel_in_the_box_as_nnunet_computes_it(site_model):
    """The body box: tiles wholly outside it are not computed, and inside it the logits are those
    of the full sliding window (every voxel keeps every tile over it); when the model calls
    foreground at the box's edge, the tiles beyond are added and every voxel is nnU-Net's.

    Compared within nnU-Net's own run-to-run spread: on the CPU two identical runs of its sliding
    window differ by a few float16 steps (it accumulates logits in half precision), which flips the
    label of a voxel where this two-epoch model's top two classes are tied. A tile missing over a box
    voxel would move its logits by whole units."""
    from LLNAssistLib.nnunet import model as M

    folder, d = site_model
    image = sitk.ReadImage(str(d / "unseen" / "image.nii.gz"))
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = list(image.GetSpacing())[::-1]
    m = M.load(folder, "cpu")
    full = tuple(slice(0, n) for n in arr.shape)
    box = (full[0], slice(0, arr.shape[1] // 8), slice(0, arr.shape[2] // 2))  # a corner
    stats = {}
    part, bbox = M._box_logits(arr, spacing, box, m, None, {}, stats, complete=False)
    whole, bbox_w = M._box_logits(arr, spacing, full, m, None, {}, {})
    assert stats["tiles_skipped"] > 0 and not stats["completed_beyond_box"] and bbox == bbox_w
    tf = m.predictor.plans_manager.transpose_forward
    inside = (slice(None), *[slice(max(box[a].start, lo) - lo, min(box[a].stop, hi) - lo)
                             for a, (lo, hi) in zip(tf, bbox)])
    tol = 0.05  # a few float16 steps at these logits' magnitude
    assert float((part[inside] - whole[inside]).abs().max()) <= tol
    top2 = whole[inside].float().topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > tol
    assert float(decided.float().mean()) > 0.5  # most voxels decided: not a vacuous comparison
    assert bool((part[inside].argmax(0) == whole[inside].argmax(0))[decided].all())
    # the far corner, beyond every computed tile, is background; the whole image's run calls foreground there
    far = (slice(None), *[slice(n // 2, n) if k else slice(None) for k, n in enumerate(part.shape[1:])])
    assert bool((part[far].argmax(0) == 0).all()) and bool((whole[far].argmax(0) > 0).any())
    # this model calls foreground on the corner box's edge: a normal run computes the other tiles too,
    # and then every voxel has nnU-Net's logits
    stats = {}
    completed, _ = M._box_logits(arr, spacing, box, m, None, {}, stats)
    assert stats["completed_beyond_box"] and stats["tiles_skipped"] == 0
    assert float((completed - whole).abs().max()) <= tol
    top2 = whole.float().topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > tol
    assert bool((completed.argmax(0) == whole.argmax(0))[decided].all())


@pytest.mark.parametrize("old,new,current,target,order", [
    ((28, 206, 206), (32, 384, 384), [3.57, 1.2, 1.2], [3.03, 0.64, 0.64], 1),  # anisotropic: nearest across slices
    ((40, 30, 12), (44, 33, 40), [1.0, 1.0, 4.0], [0.9, 0.9, 1.2], 1),  # the thick axis last
    ((20, 50, 60), (17, 33, 90), [1.0, 1.0, 1.0], [1.2, 1.5, 0.66], 1),  # isotropic: linear in 3D, down and up
    ((12, 40, 40), (14, 50, 50), [3.0, 1.0, 1.0], [2.5, 0.8, 0.8], 3),  # not nnU-Net's default: its own function
])
def test_logits_resample_as_nnunets_own_function(old, new, current, target, order):
    """The logits' resampling against nnU-Net's resample_data_or_seg_to_shape with the kwargs its
    planner writes for probabilities: equal to float16 rounding (both return float16)."""
    import torch
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    from LLNAssistLib.nnunet.model import _resample_logits

    kw = {"is_seg": False, "order": order, "order_z": 0, "force_separate_z": None}
    cm = ConfigurationManager({"architecture": {}, "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                               "resampling_fn_probabilities_kwargs": kw})
    logits = torch.from_numpy(np.random.default_rng(7).normal(0, 5, (6, *old)).astype(np.float16))
    ref = torch.as_tensor(resample_data_or_seg_to_shape(logits, new, current, target, **kw))
    ours = _resample_logits(logits, new, current, target, cm)
    assert ours.shape == ref.shape == (6, *new) and ours.dtype == torch.half
    assert torch.allclose(ours.float(), ref.float(), rtol=2 ** -9, atol=2 ** -9)
