"""Segmentation inference: verified weights, body crop, in-plane resampling, 2.5D sliding window
with Gaussian blending (no mirroring: left and right differ), result back in the input geometry."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference

from ..imageio import from_canonical, to_axial_canonical
from . import manifest as M
from . import network
from .preprocess import prepare, resample_inplane, stack25d
from .train import resolve_device


@dataclass
class LoadedModel:
    net: torch.nn.Module
    manifest: dict
    model_dir: Path
    device: torch.device


_LOADED: dict = {}  # (model, device) -> LoadedModel: a batch worker loads its model once


def load_model(model: Optional[str] = None, device: str = "auto", reuse: bool = False):
    """Resolves the model, checks its sha256, then loads the state dict with weights_only=True.
    With `reuse`, a model this process already loaded (and checked) is returned again. An nnU-Net
    trained-model folder gives an nnunet.model.NnunetModel, a MONAI bundle a bundle.BundleModel
    (run by `segment` the same way)."""
    if reuse and (model, device) in _LOADED:
        return _LOADED[(model, device)]
    from . import registry

    where = model
    installed = registry.resolve(model) if model and not Path(model).exists() else None
    if installed is not None:  # an installed model id
        where = str(installed)
    if where and Path(where).is_dir() and not (Path(where) / M.MANIFEST).is_file():
        from ..nnunet import model as nnunet_model
        from . import bundle

        foreign = nnunet_model if nnunet_model.is_nnunet_folder(Path(where)) else \
            bundle if bundle.is_bundle_folder(Path(where)) else None
        if foreign is not None:
            loaded = foreign.load(Path(where), device)
            if reuse:
                _LOADED[(model, device)] = loaded
            return loaded
    dev = resolve_device(device)
    model_dir = M.resolve_model_dir(where)
    man = M.read_manifest(model_dir)
    weights = M.verified_weights_path(model_dir, man)
    net = network.build(man["architecture"])
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() for k, v in state.items()})
    except Exception as exc:  # wrong architecture or not a state dict
        from ..errors import InputError

        raise InputError(f"model weights {weights} do not load into {man['architecture'].get('name')}: "
                         f"{exc.__class__.__name__}; the manifest and weights do not belong together") from None
    net.to(dev).eval()
    loaded = LoadedModel(net, man, model_dir, dev)
    if reuse:
        _LOADED[(model, device)] = loaded
    return loaded


def segment(image: sitk.Image, model: LoadedModel, progress: Optional[Callable] = None,
            timings: Optional[dict] = None, stats: Optional[dict] = None) -> sitk.Image:
    """Label map (DESIGN.md values) on exactly the input image's grid. `stats` receives the
    model's confidence: the mean softmax entropy (0 certain .. 1 uniform) of the voxels it called
    foreground, for the domain gate."""
    if getattr(model, "kind", "") == "nnunet":
        from ..nnunet.model import segment as segment_nnunet

        return segment_nnunet(image, model, progress=progress, timings=timings, stats=stats)
    if getattr(model, "kind", "") == "monai_bundle":
        from .bundle import segment as segment_bundle

        return segment_bundle(image, model, progress=progress, timings=timings, stats=stats)
    timings = {} if timings is None else timings
    stats = {} if stats is None else stats
    t0 = time.perf_counter()
    canon = to_axial_canonical(image)
    arr = sitk.GetArrayFromImage(canon)
    spacing = canon.GetSpacing()
    target = float(model.manifest["input"]["spacing_mm"][0])
    vol, crop, sub_shape = prepare(arr, spacing, target)
    x = stack25d(vol)  # (Z, 3, H, W)
    timings["preprocess"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    inf = model.manifest.get("inference", {})
    roi = tuple(inf.get("roi_size", (256, 256)))
    dev = model.device
    use_amp = dev.type == "cuda"
    z = x.shape[0]
    chunk = 8 if dev.type == "cpu" else 64
    probs = []
    ent_sum, ent_n = 0.0, 0
    log_c = float(np.log(model.manifest["architecture"]["out_channels"]))
    with torch.inference_mode():
        for s in range(0, z, chunk):
            xb = x[s:s + chunk].to(dev)
            with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=use_amp):
                logits = sliding_window_inference(
                    xb, roi_size=roi, sw_batch_size=8, predictor=model.net,
                    overlap=float(inf.get("overlap", 0.25)), mode="gaussian", padding_mode="constant",
                    cval=-5.0)
            p = torch.softmax(logits.float(), 1)
            # back to the crop's pixel grid before the argmax, so labels follow the input geometry
            p = resample_inplane(p, tuple(sub_shape[1:]))
            lab = p.argmax(1)
            fg = lab > 0
            if bool(fg.any()):
                ent = -(p * torch.log(p.clamp_min(1e-8))).sum(1) / log_c
                ent_sum += float(ent[fg].sum())
                ent_n += int(fg.sum())
            probs.append(lab.to(torch.uint8).cpu())
            if progress:
                progress("inference", min(1.0, (s + chunk) / z), f"slices {min(s + chunk, z)}/{z}")
    if dev.type == "cuda":
        torch.cuda.synchronize()
    timings["inference"] = time.perf_counter() - t1
    stats["foreground_entropy"] = ent_sum / ent_n if ent_n else float("nan")
    stats["foreground_voxels"] = ent_n

    t2 = time.perf_counter()
    lab = np.zeros(arr.shape, np.uint8)
    lab[:, crop.j0:crop.j1, crop.i0:crop.i1] = torch.cat(probs).numpy()
    out = from_canonical(lab, canon, image)
    timings["postprocess"] = time.perf_counter() - t2
    return out
