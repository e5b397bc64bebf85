"""A trained nnU-Net v2 model folder run like the bundled model (`--model PATH`).

The folder is what nnU-Net writes (dataset.json, plans.json, fold_*/checkpoint_final.pth); every
present fold is ensembled, mirroring is off. It is validated before anything runs: files, the
configuration's spacing, labels mapped by name to the conventions' values (or through
`llnassist_labels.json` beside it), and the checkpoints' sha256 against the LLNAssist manifest
(`llnassist.json`) when there is one. Checkpoints load with `weights_only=True` and a numpy
allow-list (model/checkpoint.py), never by unrestricted unpickling.

The run gives nnU-Net's own labels, faster: nnU-Net's own preprocessing of the whole image, then
its sliding window and fold ensemble (its tiles, Gaussian weights and float16 sums) with the tiles
sent through the network in batches, first only the tiles that meet the body's bounding box (+10 mm);
every voxel inside the box gets every tile nnU-Net puts over it. When the model calls foreground on
the box's edge, the remaining tiles are computed and added as well, so every voxel gets nnU-Net's
logits; otherwise the air beyond the box, which no computed tile covers, is background. The logits
go back to the image's spacing as nnU-Net's plans say, in float32 slabs instead of float64.
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
# Sliding-window tiles per network call, by device type. CPU: 2 for a small network (PyTorch runs a
# batch of one small 3D tile through its slow im2col convolution: 7x slower per tile with the tiny
# plan; 2 and 3 were equally fast, 4 and more slower). A network whose first stage holds more than
# BATCH_MAX_ACTIVATION values per tile goes one tile at a time: nnU-Net's default plan (32 features,
# 16x224x224 tiles) gained 10 % per tile from pairs and needed 40 % more memory. CUDA: 1, as nnU-Net
# does (not measured here: no GPU was lent).
TILES_PER_BATCH = {"cpu": 2, "cuda": 1}
BATCH_MAX_ACTIVATION = 2 ** 22


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


def _body_box(arr: np.ndarray, spacing_zyx) -> tuple:
    """`_box` of the body found on every k-th pixel in-plane (k pixels span at most a quarter of the
    margin), widened by k: the body's bounds within a coarse pixel, in 0.025 s instead of 0.35 s on
    a 384x384x32 image at 0.64 mm. Only where the tiles start is at stake; the edge check completes
    the run."""
    from ..body import body_mask

    k = max(1, int(BODY_MARGIN_MM / 4 / max(spacing_zyx[1], spacing_zyx[2])))
    box = _box(body_mask(arr[:, ::k, ::k]), [spacing_zyx[0], spacing_zyx[1] * k, spacing_zyx[2] * k], BODY_MARGIN_MM)
    return (box[0], *[slice(max(0, b.start * k - k), min(n, b.stop * k + k)) for b, n in zip(box[1:], arr.shape[1:])])


def _predictor_class():
    """nnU-Net's predictor, able to skip the sliding-window tiles that lie wholly outside a box of
    the preprocessed image. Every voxel inside the box is still covered by every tile nnU-Net would
    put over it, so its logits are nnU-Net's own; only tiles over air are not computed."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class BoxPredictor(nnUNetPredictor):
        keep_box = None  # slices of the preprocessed (resampled) image, or None: every tile
        keep_shape = None  # the image size the box refers to (nnU-Net pads images smaller than a patch)
        beyond = False  # True: only the tiles that do not meet the box (completing a box run)
        return_sums = False  # True: the weighted sums and the summed weights (last channel), float32
        skipped = 0  # tiles left out by the last prediction
        on_tiles = None  # callback(done, total) after each batch of tiles

        def _internal_get_sliding_window_slicers(self, image_size):
            slicers = super()._internal_get_sliding_window_slicers(image_size)
            box, shape = self.keep_box, tuple(self.keep_shape or ())
            if box is None or len(shape) != len(image_size) or any(n < k for n, k in zip(image_size, shape)):
                return slicers
            # nnU-Net pads an image smaller than a patch evenly on both sides: the box moves with it
            box = tuple(slice(b.start + (n - k) // 2, b.stop + (n - k) // 2) for b, n, k in zip(box, image_size, shape))
            kept = [sl for sl in slicers if _tile_meets_box(sl[1:], box) != self.beyond]
            self.skipped += len(slicers) - len(kept)
            return kept

        def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device=True):
            # nnU-Net's sums (Gaussian-weighted tiles added in float16 in nnU-Net's order, divided by the
            # summed weights), with several tiles per network call (_tiles_per_batch, TILES_PER_BATCH)
            import torch
            from nnunetv2.inference.sliding_window_prediction import compute_gaussian

            out_dev = self.device if do_on_device else torch.device("cpu")
            data = data.to(out_dev)
            logits = torch.zeros((self.label_manager.num_segmentation_heads, *data.shape[1:]), dtype=torch.half,
                                 device=out_dev)
            weight_sum = torch.zeros(data.shape[1:], dtype=torch.half, device=out_dev)
            weight = (compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1. / 8,
                                       value_scaling_factor=10, device=out_dev) if self.use_gaussian else 1)
            step = _tiles_per_batch(self.device.type, self.configuration_manager)
            for i in range(0, len(slicers), step):
                group = slicers[i:i + step]
                x = torch.stack([data[sl] for sl in group]).to(self.device)
                pred = self._internal_maybe_mirror_and_predict(x).to(out_dev)
                for tile, sl in zip(pred, group):
                    logits[sl] += tile * weight
                    weight_sum[sl[1:]] += weight
                if self.on_tiles is not None:
                    self.on_tiles(i + len(group), len(slicers))
            if self.return_sums:  # two runs over different tiles add up before the division
                return torch.cat([logits.float(), weight_sum.float()[None]])
            torch.div(logits, weight_sum, out=logits)
            if bool(torch.isinf(logits).any()):
                raise RuntimeError("the model's logits overflowed float16 (nnU-Net's accumulation type)")
            return logits

    return BoxPredictor


def _box_skips_tiles(pred, box: tuple, shape: tuple) -> bool:
    """Whether nnU-Net's sliding window over a preprocessed image of `shape` has tiles that do not
    meet `box` (the predictor's own tiling, on the image as nnU-Net pads it to at least a patch)."""
    patch = list(pred.configuration_manager.patch_size)
    padded = list(shape)
    padded[-len(patch):] = [max(n, k) for n, k in zip(padded[-len(patch):], patch)]
    pred.keep_box, pred.keep_shape, pred.beyond, pred.skipped = box, shape, False, 0
    try:
        pred._internal_get_sliding_window_slicers(tuple(padded))
        return pred.skipped > 0
    finally:
        pred.keep_box = pred.keep_shape = None


def _tiles_per_batch(device_type: str, cm) -> int:
    arch = (cm.configuration.get("architecture") or {}).get("arch_kwargs") or {}
    features = (arch.get("features_per_stage") or [32])[0]
    if int(np.prod(cm.patch_size)) * int(features) > BATCH_MAX_ACTIVATION:
        return 1
    return TILES_PER_BATCH.get(device_type, 1)


def _tile_meets_box(tile: tuple, box: tuple) -> bool:
    for t, b in zip(tile, box):
        if isinstance(t, (int, np.integer)):  # a 2D configuration's slice index
            if not b.start <= t < b.stop:
                return False
        elif t.stop <= b.start or t.start >= b.stop:
            return False
    return True


def _box_logits(arr: np.ndarray, spacing: list, box: tuple, model: NnunetModel, progress, timings: dict,
                stats: dict, complete: bool = True):
    """nnU-Net's logits resampled back to the image's spacing, on its crop to non-zero (in nnU-Net's
    axis order), tiles computed where they meet `box` (the whole image when `box` covers it), and
    the rest of them too when the model calls foreground on the box's edge (unless `complete` is
    False); outside every computed tile: background. Returns (logits, the crop's bounds)."""
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
        # every tile meets the box (the body fills the field of view): nnU-Net's own single run
        rbox = tuple(rbox) if _box_skips_tiles(pred, tuple(rbox), tuple(x.shape[1:])) else None
    timings["preprocess"] = timings.get("preprocess", 0.0) + time.perf_counter() - t0
    t1 = time.perf_counter()
    n_folds = len(pred.list_of_parameters)
    if progress:
        progress("inference", 0.05, f"{n_folds} fold(s), {tuple(x.shape[1:])} voxels")
        state = {"fold": 0, "done": 0}

        def on_tiles(done, total):  # one sliding window per fold: the count starting again is the next fold
            state["fold"] += done < state["done"]
            state["done"] = done
            f = min(state["fold"], n_folds - 1)
            progress("inference", 0.05 + 0.9 * (f + done / total) / n_folds,
                     f"fold {f + 1}/{n_folds}: tile {done}/{total}")
        pred.on_tiles = on_tiles
    xt = torch.from_numpy(np.asarray(x, np.float32))
    del x

    def run(data, beyond: bool):
        pred.keep_box, pred.keep_shape, pred.beyond, pred.return_sums = rbox, tuple(data.shape[1:]), beyond, True
        pred.skipped = 0
        out = pred.predict_logits_from_preprocessed_data(data)
        return out[:-1], out[-1], pred.skipped

    completed = False
    try:
        with torch.inference_mode():
            if rbox is None:  # the box is the whole image: nnU-Net's own run
                logits, skipped = pred.predict_logits_from_preprocessed_data(xt), 0
            else:
                sums, weights, skipped = run(xt, False)
                if complete and _foreground_on_faces(sums, weights, rbox):
                    # the model calls something at the box's edge: compute the rest of nnU-Net's tiles too,
                    # so every voxel gets nnU-Net's logits (the sums add up as in nnU-Net's single run)
                    if progress:
                        progress("inference", 0.5, "foreground at the body box's edge: the tiles beyond it too")
                    more, more_w, _ = run(xt, True)
                    sums += more
                    weights += more_w
                    completed, skipped = True, 0
                logits = (sums / weights).half()  # NaN where no computed tile covers a voxel
                uncovered = torch.isnan(logits[0])
                if bool(uncovered.any()):  # no tile computed there (air beyond the box): background
                    logits[:, uncovered] = 0.0
                    logits[0][uncovered] = 10.0
    finally:
        pred.keep_box = pred.keep_shape = pred.on_tiles = None
        pred.beyond = pred.return_sums = False
    del xt
    stats["completed_beyond_box"] = completed
    stats["tiles_skipped"] = skipped
    timings["inference"] = timings.get("inference", 0.0) + time.perf_counter() - t1
    t2 = time.perf_counter()
    logits = _resample_logits(logits, cropped_shape, target, sp_t, cm)
    timings["postprocess"] = timings.get("postprocess", 0.0) + time.perf_counter() - t2
    return logits, bbox


_FAST_RESAMPLING_KWARGS = {"is_seg", "order", "order_z", "force_separate_z", "separate_z_anisotropy_threshold"}


def _resample_logits(logits, new_shape, current_spacing, new_spacing, cm):
    """The logits resampled to `new_shape` as the plans say. nnU-Net's default for probabilities
    (linear in-plane, nearest across the slices when the spacing is anisotropic) is done here in
    float32 slabs with a float16 result, as nnU-Net keeps them; nnU-Net's own function converts the
    whole volume to float64 and resizes slice by slice (3.4 s of its 23.6 s on a 384x384x32 image).
    Any other resampling in the plans: nnU-Net's own function."""
    import torch
    import torch.nn.functional as F
    from nnunetv2.preprocessing.resampling import default_resampling as R

    name = cm.configuration.get("resampling_fn_probabilities")
    kw = dict(cm.configuration.get("resampling_fn_probabilities_kwargs") or {})
    new = tuple(int(n) for n in new_shape)
    old = tuple(logits.shape[1:])
    if (name != "resample_data_or_seg_to_shape" or not set(kw) <= _FAST_RESAMPLING_KWARGS or kw.get("is_seg")
            or kw.get("order", 3) != 1 or kw.get("order_z", 0) != 0 or len(old) != 3):
        return torch.as_tensor(cm.resampling_fn_probabilities(logits, new_shape, current_spacing, new_spacing))
    if old == new:
        return logits
    separate, axis = R.determine_do_sep_z_and_axis(kw.get("force_separate_z", False), current_spacing, new_spacing,
                                                   kw.get("separate_z_anisotropy_threshold", R.ANISO_THRESHOLD))
    out = torch.empty((logits.shape[0], *new), dtype=torch.half)
    if not separate:  # linear in 3D, one channel at a time
        for c in range(logits.shape[0]):
            out[c] = F.interpolate(logits[c][None, None].float(), size=new, mode="trilinear", align_corners=False)[0, 0]
        return out
    # nearest across the slices is a choice of source slice: nnU-Net's map_coordinates(order=0) rounds
    # (i + 0.5) * old / new - 0.5 to the nearest index, clamped to the volume
    scale = float(old[axis]) / new[axis]
    src = np.clip(np.floor(scale * (np.arange(new[axis]) + 0.5) - 0.5 + 0.5), 0, old[axis] - 1).astype(np.int64)
    plane = tuple(n for a, n in enumerate(new) if a != axis)
    moved = logits.movedim(axis + 1, 0)  # (slices, channels, in-plane...)
    dest = out.movedim(axis + 1, 0)
    for k0 in range(0, len(src), 8):
        idx = torch.from_numpy(src[k0:k0 + 8])
        dest[k0:k0 + len(idx)] = F.interpolate(moved[idx].float(), size=plane, mode="bilinear", align_corners=False)
    return out


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


def _foreground_on_faces(sums, weights, box: tuple) -> bool:
    """Whether the model calls foreground on a face of `box` (network grid) that lies inside the image:
    there it may call something beyond the box too."""
    for axis, b in enumerate(box):
        for face, inside in ((b.start, b.start > 0), (b.stop - 1, b.stop < weights.shape[axis])):
            if inside:
                sel = tuple(face if a == axis else box[a] for a in range(len(box)))
                if bool(((sums[(slice(None), *sel)] / weights[sel]).argmax(0) > 0).any()):
                    return True
    return False


def segment(image: sitk.Image, model: NnunetModel, progress: Optional[Callable] = None,
            timings: Optional[dict] = None, stats: Optional[dict] = None) -> sitk.Image:
    """Label map with the conventions' values on the image's grid (see the module docstring)."""

    timings = {} if timings is None else timings
    stats = {} if stats is None else stats
    arr = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x), as nnU-Net's SimpleITKIO reads it
    spacing = list(image.GetSpacing())[::-1]
    full = tuple(slice(0, n) for n in arr.shape)
    box = _body_box(arr, spacing) if CROP_TO_BODY else full
    lab = _predict_box(arr, spacing, box, model, progress, timings, stats)
    stats["cropped_to_body"] = bool(stats.get("tiles_skipped"))
    lut = np.zeros(256, np.uint8)
    for src, dst in model.label_map.items():
        lut[src] = dst
    out = sitk.GetImageFromArray(lut[lab])
    out.CopyInformation(image)
    return out
