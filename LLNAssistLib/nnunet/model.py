"""A trained nnU-Net v2 model folder run like the bundled model (`--model PATH`).

The folder is what nnU-Net writes (dataset.json, plans.json, fold_*/checkpoint_final.pth); every
present fold is ensembled, mirroring is off. It is validated before anything runs: files, the
configuration's spacing, labels mapped by name to the conventions' values (or through
`llnassist_labels.json` beside it), and the checkpoints' sha256 against the LLNAssist manifest
(`llnassist.json`) when there is one. Checkpoints load with `weights_only=True` and a numpy
allow-list (model/checkpoint.py), never by unrestricted unpickling.

The run gives nnU-Net's own labels, faster: nnU-Net's own preprocessing of the whole image, then
its sliding window and fold ensemble with the tiles that lie wholly outside the body's bounding box
(+10 mm) skipped. Every voxel inside the box still gets every tile nnU-Net puts over it, so its
logits are nnU-Net's; voxels no computed tile covers (air beyond the box) are background: lateral nodes
and compartments lie inside the body, so only the model's calls in the air can differ from nnU-Net's.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..model.labelmap import map_label_names

MANIFEST = "llnassist.json"
BODY_MARGIN_MM = 10.0
CROP_TO_BODY = True  # off: predict the whole image (what nnU-Net's predictor does), for comparisons


def is_nnunet_folder(path: Path) -> bool:
    return path.is_dir() and (path / "plans.json").is_file() and (path / "dataset.json").is_file()


def _folds(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("fold_*/checkpoint_final.pth") if p.parent.name.split("_")[1].isdigit())


def label_mapping(folder: Path, dataset_json: dict) -> dict:
    """nnU-Net label value -> conventions value, by the conventions' names or the mapping file."""
    labels = dataset_json.get("labels", {})
    if not isinstance(labels, dict) or not labels:
        raise InputError(f"{folder / 'dataset.json'} has no labels")
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise InputError(f"model {folder.name} is region-based (label {name!r} = {value}); LLNAssist runs "
                             "label-based nnU-Net models")
    return map_label_names(folder, labels)


def validate(folder: Path) -> dict:
    """Checks the folder before anything runs; returns its LLNAssist manifest (or one made up
    from the folder, marked unverified, for an nnU-Net model trained elsewhere)."""
    from ..model.manifest import check_listed, sha256_file

    if not is_nnunet_folder(folder):
        raise InputError(f"{folder} is not an nnU-Net trained-model folder (dataset.json, plans.json, "
                         "fold_*/checkpoint_final.pth)")
    folds = _folds(folder)
    if not folds:
        raise InputError(f"{folder} has no fold_*/checkpoint_final.pth; the training did not finish")
    try:
        dataset_json = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    except ValueError:
        raise InputError(f"{folder}: dataset.json or plans.json is not valid JSON") from None
    if len(dataset_json.get("channel_names", {})) != 1:
        raise InputError(f"model {folder.name} expects {len(dataset_json.get('channel_names', {}))} input channels; "
                         "LLNAssist gives one (the axial T2)")
    label_mapping(folder, dataset_json)
    man_path = folder / MANIFEST
    man = json.loads(man_path.read_text(encoding="utf-8")) if man_path.is_file() else None
    sums = {p.relative_to(folder).as_posix(): sha256_file(p) for p in folds}
    if man is not None:
        check_listed(folder, man.get("checkpoints", {}), sums, MANIFEST)
    configuration = (man or {}).get("configuration")
    if configuration is None:
        ck = _checkpoint(folds[0])
        configuration = ck.get("init_args", {}).get("configuration")
    cfg = plans.get("configurations", {}).get(configuration or "")
    if not cfg or len(cfg.get("spacing", [])) not in (2, 3):
        raise InputError(f"model {folder.name}: plans.json has no configuration {configuration!r} with a spacing")
    if man is None:
        man = {"id": f"nnunet-{folder.parent.name.lower()}-{configuration}", "version": "unregistered",
               "kind": "nnunet", "configuration": configuration, "checkpoints": sums, "verified": False,
               "training_data": {"description": "unknown (an nnU-Net model without an LLNAssist manifest)",
                                 "synthetic": None},
               "notice": "An nnU-Net model LLNAssist knows nothing about: its training data and accuracy are "
                         "unknown."}
    man.setdefault("input", {"spacing_mm": cfg["spacing"][::-1]})
    # one digest for the whole ensemble (summary.json's model sha256)
    man["sha256"] = hashlib.sha256("".join(f"{k}:{sums[k]}" for k in sorted(sums)).encode()).hexdigest()
    return man


def _checkpoint(path: Path) -> dict:
    from ..model.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or "network_weights" not in ck:
        raise InputError(f"{path} is not an nnU-Net checkpoint (no network_weights)")
    return ck


@dataclass
class NnunetModel:
    folder: Path
    manifest: dict
    device: object
    predictor: object
    preprocessor: object
    label_map: dict
    kind: str = "nnunet"
    timings: dict = field(default_factory=dict)


def load(folder: Path, device: str = "auto") -> NnunetModel:
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise InputError("this is an nnU-Net model; running it needs nnunetv2 (`pip install nnunetv2==2.6.0 "
                         "torch==<your torch version>` in one command)") from None
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from ..model.train import resolve_device

    man = validate(folder)
    dev = resolve_device(device)
    dataset_json = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    plans_manager = PlansManager(json.loads((folder / "plans.json").read_text(encoding="utf-8")))
    cm = plans_manager.get_configuration(man["configuration"])
    params = []
    for p in _folds(folder):
        ck = _checkpoint(p)
        params.append(ck["network_weights"])
    arch = cm.network_arch_class_name
    if not arch.startswith("dynamic_network_architectures."):  # the class is imported by name from the plans
        raise InputError(f"model {folder.name} names network class {arch}; only nnU-Net's own "
                         "(dynamic_network_architectures) networks are loaded")
    network = get_network_from_plans(arch, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import,
                                     determine_num_input_channels(plans_manager, cm, dataset_json),
                                     plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
                                     allow_init=False, deep_supervision=False)
    try:
        network.load_state_dict(params[0])
    except RuntimeError:
        raise InputError(f"model {folder.name}: its checkpoints do not fit the network its plans.json describes") \
            from None
    predictor = _predictor_class()(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=dev,
                                perform_everything_on_device=dev.type == "cuda", verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, cm, params, dataset_json, "nnUNetTrainerNoMirroring",
                                    None)  # mirroring off, whatever the checkpoint allowed
    return NnunetModel(folder, man, dev, predictor, DefaultPreprocessor(verbose=False),
                       label_mapping(folder, dataset_json))


def _box(body: np.ndarray, spacing_zyx, margin_mm: float) -> tuple:
    """Slices of the body's in-plane bounding box (+ margin) in the raw (z, y, x) array, every
    slice kept; the whole array when no body is found."""
    if not body.any():
        return tuple(slice(0, s) for s in body.shape)
    out = [slice(0, body.shape[0])]
    for axis in (1, 2):
        idx = np.flatnonzero(body.any(tuple(a for a in range(3) if a != axis)))
        m = int(np.ceil(margin_mm / spacing_zyx[axis]))
        out.append(slice(max(0, idx[0] - m), min(body.shape[axis], idx[-1] + 1 + m)))
    return tuple(out)


def _predictor_class():
    """nnU-Net's predictor, able to skip the sliding-window tiles that lie wholly outside a box of
    the preprocessed image. Every voxel inside the box is still covered by every tile nnU-Net would
    put over it, so its logits are nnU-Net's own; only tiles over air are not computed."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class BoxPredictor(nnUNetPredictor):
        keep_box = None  # slices of the preprocessed (resampled) image, or None: every tile
        keep_shape = None  # the image size the box refers to (nnU-Net pads images smaller than a patch)
        skipped = 0  # tiles left out by the last prediction

        def _internal_get_sliding_window_slicers(self, image_size):
            slicers = super()._internal_get_sliding_window_slicers(image_size)
            box, shape = self.keep_box, tuple(self.keep_shape or ())
            if box is None or len(shape) != len(image_size) or any(n < k for n, k in zip(image_size, shape)):
                return slicers
            # nnU-Net pads an image smaller than a patch evenly on both sides: the box moves with it
            box = tuple(slice(b.start + (n - k) // 2, b.stop + (n - k) // 2) for b, n, k in zip(box, image_size, shape))
            kept = [sl for sl in slicers if _tile_meets_box(sl[1:], box)]
            self.skipped += len(slicers) - len(kept)
            return kept

    return BoxPredictor


def _tile_meets_box(tile: tuple, box: tuple) -> bool:
    for t, b in zip(tile, box):
        if isinstance(t, (int, np.integer)):  # a 2D configuration's slice index
            if not b.start <= t < b.stop:
                return False
        elif t.stop <= b.start or t.start >= b.stop:
            return False
    return True


def _box_logits(arr: np.ndarray, spacing: list, box: tuple, model: NnunetModel, progress, timings: dict,
                stats: dict):
    """nnU-Net's logits resampled back to the image's spacing, on its crop to non-zero (in nnU-Net's
    axis order), tiles computed only where they meet `box` (the whole image when `box` covers it);
    outside every computed tile: background. Returns (logits, the crop's bounds)."""
    import torch
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    pred, pm = model.predictor, model.predictor.plans_manager
    cm = pred.configuration_manager
    t0 = time.perf_counter()
    tf = pm.transpose_forward
    data = arr[None].transpose([0, *[i + 1 for i in tf]])
    sp_t = [spacing[i] for i in tf]
    box_t = [box[i] for i in tf]
    full = all(b.start == 0 and b.stop == n for b, n in zip(box_t, data.shape[1:]))
    # nnU-Net's own preprocessing of the whole image: crop to non-zero, normalise, resample
    data, seg, bbox = crop_to_nonzero(data, None)
    data = model.preprocessor._normalize(data, seg, cm, pm.foreground_intensity_properties_per_channel)
    del seg
    target = cm.spacing if len(cm.spacing) == 3 else [sp_t[0], *cm.spacing]
    new_shape = compute_new_shape(data.shape[1:], sp_t, target)
    x = cm.resampling_fn_data(data, new_shape, sp_t, target)
    cropped_shape = data.shape[1:]
    del data
    rbox = None
    if not full:  # the box in the resampled image, one voxel wider on each side
        rbox = []
        for b, (lo, hi), n_old, n_new in zip(box_t, bbox, cropped_shape, new_shape):
            r = n_new / n_old
            start, stop = max(b.start, lo) - lo, min(b.stop, hi) - lo
            rbox.append(slice(max(0, int(np.floor(start * r)) - 1), min(n_new, int(np.ceil(stop * r)) + 1)))
        rbox = tuple(rbox)
    pred.keep_box, pred.keep_shape, pred.skipped = rbox, tuple(x.shape[1:]), 0
    timings["preprocess"] = timings.get("preprocess", 0.0) + time.perf_counter() - t0
    t1 = time.perf_counter()
    if progress:
        progress("inference", 0.05, f"{len(pred.list_of_parameters)} fold(s), {tuple(x.shape[1:])} voxels")
    try:
        with torch.inference_mode():
            logits = pred.predict_logits_from_preprocessed_data(torch.from_numpy(np.asarray(x, np.float32)))
            uncovered = torch.isnan(logits[0])
            if bool(uncovered.any()):  # no tile computed there (air): background
                logits[:, uncovered] = 0.0
                logits[0][uncovered] = 10.0
    finally:
        pred.keep_box = pred.keep_shape = None
    del x
    stats["tiles_skipped"] = pred.skipped
    timings["inference"] = timings.get("inference", 0.0) + time.perf_counter() - t1
    t2 = time.perf_counter()
    logits = torch.as_tensor(cm.resampling_fn_probabilities(logits, cropped_shape, target, sp_t))
    timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - t2
    return logits, bbox


def _predict_box(arr: np.ndarray, spacing: list, box: tuple, model: NnunetModel, progress, timings: dict,
                 stats: dict) -> np.ndarray:
    """nnU-Net's labels (its own values) on the raw (z, y, x) array (see `_box_logits`)."""
    import torch

    pm, lm = model.predictor.plans_manager, model.predictor.label_manager
    tf = pm.transpose_forward
    logits, bbox = _box_logits(arr, spacing, box, model, progress, timings, stats)
    t2 = time.perf_counter()
    lab_sub = lm.convert_logits_to_segmentation(logits)
    lab_sub = lab_sub.cpu().numpy() if isinstance(lab_sub, torch.Tensor) else np.asarray(lab_sub)
    fg = torch.as_tensor(lab_sub > 0)
    stats["foreground_voxels"] = int(fg.sum())
    if stats["foreground_voxels"]:  # the model's confidence where it called foreground, for the domain gate
        probs = torch.softmax(logits.float(), 0)
        ent = -(probs * torch.log(probs.clamp_min(1e-8))).sum(0) / float(np.log(probs.shape[0]))
        stats["foreground_entropy"] = float(ent[fg].mean())
    else:
        stats["foreground_entropy"] = float("nan")
    full_t = np.zeros(tuple(arr.shape[i] for i in tf), np.uint8)
    full_t[tuple(slice(lo, hi) for lo, hi in bbox)] = lab_sub
    timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - t2
    return full_t.transpose(pm.transpose_backward)


def _touches_box_edge(lab: np.ndarray, box: tuple) -> bool:
    """Foreground on the in-plane faces of the box (where the box is inside the image): the model
    sees something there, so the crop may have cut it."""
    for axis in (1, 2):
        s = box[axis]
        for edge, inside in ((s.start, s.start > 0), (s.stop - 1, s.stop < lab.shape[axis])):
            if inside and lab.take(edge, axis=axis)[tuple(box[a] for a in range(3) if a != axis)].any():
                return True
    return False


def segment(image: sitk.Image, model: NnunetModel, progress: Optional[Callable] = None,
            timings: Optional[dict] = None, stats: Optional[dict] = None) -> sitk.Image:
    """Label map with the conventions' values on the image's grid (see the module docstring)."""
    from ..body import body_mask

    timings = {} if timings is None else timings
    stats = {} if stats is None else stats
    arr = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x), as nnU-Net's SimpleITKIO reads it
    spacing = list(image.GetSpacing())[::-1]
    full = tuple(slice(0, n) for n in arr.shape)
    box = _box(body_mask(arr), spacing, BODY_MARGIN_MM) if CROP_TO_BODY else full
    lab = _predict_box(arr, spacing, box, model, progress, timings, stats)
    stats["cropped_to_body"] = bool(stats.get("tiles_skipped"))
    # Lateral nodes and compartments lie inside the body: what the model would call in the air beyond
    # the box (+10 mm) is not computed. Recorded, so a comparison with nnU-Net can say where they differ.
    stats["foreground_at_box_edge"] = bool(stats["cropped_to_body"] and _touches_box_edge(lab, box))
    lut = np.zeros(256, np.uint8)
    for src, dst in model.label_map.items():
        lut[src] = dst
    out = sitk.GetImageFromArray(lut[lab])
    out.CopyInformation(image)
    return out
