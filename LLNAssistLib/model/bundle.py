"""A MONAI bundle run like the bundled model (`--model PATH`).

The folder is a MONAI bundle as MONAI writes it: configs/inference.json (its `preprocessing`,
`inferer` and, for a state dict, `network_def`), configs/metadata.json (the output channels'
names in network_data_format.outputs.pred.channel_def) and models/model.ts (TorchScript) or
models/model.pt (a state dict). The run uses the bundle's own preprocessing, inferer and
postprocessing (without its file writers: LLNAssist writes the outputs), so the labels are the ones
MONAI's own run of the bundle writes. A bundle without postprocessing, or whose postprocessing does
not end on the image's grid, gets the argmax with the preprocessing inverted (MONAI's Invertd,
nearest). Labels are mapped by name (model/labelmap.py).

A bundle's config builds objects and evaluates expressions, and a TorchScript file is a program:
only a trusted bundle may be loaded. model.pt is loaded with `weights_only=True` (a state dict,
never a pickled object), and `llnassist.json` beside the configs holds the sha256 of every file
that runs (configs, weights, scripts); `llnassist models add` writes it and every later load is held
to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .labelmap import map_label_names

MANIFEST = "llnassist.json"
WEIGHTS = ("models/model.ts", "models/model.pt")


def is_bundle_folder(path: Path) -> bool:
    return path.is_dir() and (path / "configs" / "inference.json").is_file() and \
        any((path / w).is_file() for w in WEIGHTS)


def runnable_files(folder: Path) -> list:
    """Every file a run reads or executes, relative to the folder (checksummed)."""
    out = [p for p in (folder / "configs").glob("*.json")]
    out += [folder / w for w in WEIGHTS if (folder / w).is_file()]
    if (folder / "scripts").is_dir():
        out += [p for p in (folder / "scripts").rglob("*.py")]
    return sorted(str(p.relative_to(folder).as_posix()) for p in out)


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(f"{path} is missing or not valid JSON; the bundle is incomplete") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold one JSON object")
    return data


def channel_names(folder: Path) -> dict:
    """{output channel name: channel index} from metadata.json."""
    meta = _json(folder / "configs" / "metadata.json")
    fmt = meta.get("network_data_format") or {}
    n_in = ((fmt.get("inputs") or {}).get("image") or {}).get("num_channels", 1)
    if int(n_in) != 1:
        raise InputError(f"bundle {folder.name} expects {n_in} input channels; LLNAssist gives one (the axial T2)")
    pred = (fmt.get("outputs") or {}).get("pred") or {}
    channels = pred.get("channel_def")
    if not isinstance(channels, dict) or not channels:
        raise InputError(f"bundle {folder.name}: configs/metadata.json has no network_data_format.outputs.pred."
                         "channel_def naming the output channels")
    return {str(name): int(idx) for idx, name in channels.items()}


def validate(folder: Path) -> dict:
    """Checks the bundle before anything runs; returns its LLNAssist manifest (or one made up from
    the bundle, marked unverified, when it has none)."""
    from .manifest import check_listed, sha256_file

    if not is_bundle_folder(folder):
        raise InputError(f"{folder} is not a MONAI bundle (configs/inference.json and models/model.ts or "
                         "models/model.pt)")
    config = _json(folder / "configs" / "inference.json")
    weights = next(w for w in WEIGHTS if (folder / w).is_file())
    needed = ["preprocessing", "inferer"] + (["network_def"] if weights.endswith(".pt") else [])
    missing = [k for k in needed if k not in config]
    if missing:
        raise InputError(f"bundle {folder.name}: configs/inference.json has no {', '.join(missing)}")
    map_label_names(folder, channel_names(folder))
    sums = {rel: sha256_file(folder / rel) for rel in runnable_files(folder)}
    man_path = folder / MANIFEST
    man = _json(man_path) if man_path.is_file() else None
    if man is not None:
        check_listed(folder, man.get("files", {}), sums, MANIFEST)
    else:
        meta = _json(folder / "configs" / "metadata.json")
        man = {"id": f"bundle-{folder.name.lower()}", "version": str(meta.get("version", "unregistered")),
               "kind": "monai_bundle", "weights": weights, "files": sums, "verified": False,
               "training_data": {"description": "unknown (a MONAI bundle without an LLNAssist manifest)",
                                 "synthetic": None},
               "notice": "A MONAI bundle LLNAssist knows nothing about: its training data and accuracy are unknown."}
    man["weights"] = weights
    man["sha256"] = hashlib.sha256("".join(f"{k}:{sums[k]}" for k in sorted(sums)).encode()).hexdigest()
    return man


@dataclass
class BundleModel:
    folder: Path
    manifest: dict
    device: object
    network: object
    preprocessing: object
    inferer: object
    label_map: dict
    postprocessing: object = None
    kind: str = "monai_bundle"


@contextlib.contextmanager
def _bundle_importable(folder: Path):
    """The bundle's `scripts` package importable while its config is parsed, as MONAI runs it;
    forgotten afterwards so two bundles' scripts never mix."""
    before = set(sys.modules)
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for name in set(sys.modules) - before:
            if name == "scripts" or name.startswith("scripts."):
                del sys.modules[name]


def load(folder: Path, device: str = "auto") -> BundleModel:
    import torch
    from monai.bundle import ConfigParser

    from .train import resolve_device

    man = validate(folder)
    dev = resolve_device(device)
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(folder)
    parser["device"] = dev
    weights = folder / man["weights"]
    try:
        with _bundle_importable(folder):
            if weights.suffix == ".ts":
                net = torch.jit.load(str(weights), map_location=dev)
            else:
                net = parser.get_parsed_content("network_def")
                state = _state_dict(weights)
                net.load_state_dict(state)
            preprocessing = parser.get_parsed_content("preprocessing")
            inferer = parser.get_parsed_content("inferer")
            postprocessing = _postprocessing(parser)
    except InputError:
        raise
    except Exception as exc:  # a config or weights that do not work together
        raise InputError(f"bundle {folder.name} does not load: {exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    net.to(dev).eval()
    return BundleModel(folder, man, dev, net, preprocessing, inferer,
                       map_label_names(folder, channel_names(folder)), postprocessing)


def _postprocessing(parser):
    """The bundle's postprocessing without its file writers (LLNAssist writes the outputs), or
    None when it has none."""
    from monai.transforms import Compose, SaveImage, SaveImaged

    if "postprocessing" not in parser.config:
        return None
    post = parser.get_parsed_content("postprocessing")
    steps = post.transforms if isinstance(post, Compose) else [post]
    kept = [t for t in steps if not isinstance(t, (SaveImage, SaveImaged))]
    return Compose(kept) if kept else None


def _state_dict(path: Path) -> dict:
    from .checkpoint import load_checkpoint

    state = load_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # MONAI's CheckpointSaver layout
        state = state["model"]
    if not isinstance(state, dict):
        raise InputError(f"{path} is not a state dict; save the bundle's weights with "
                         "torch.save(model.state_dict(), ...)")
    return state


def segment(image: sitk.Image, model: BundleModel, progress: Optional[Callable] = None,
            timings: Optional[dict] = None, stats: Optional[dict] = None) -> sitk.Image:
    """Label map with the conventions' values on the image's grid."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    timings = {} if timings is None else timings
    stats = {} if stats is None else stats
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llnassist-bundle-") as tmp:
        # the bundle's LoadImaged reads a file: the image as a NIfTI, voxel order kept
        path = Path(tmp) / "image.nii.gz"
        sitk.WriteImage(image, str(path))
        data = model.preprocessing({"image": str(path)})
    x = data["image"]
    timings["preprocess"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    if progress:
        progress("inference", 0.05, f"bundle {model.manifest['id']}, {tuple(x.shape[1:])} voxels")
    with torch.no_grad():  # not inference_mode: MONAI's inverse transforms update tensors in place
        logits = model.inferer(x[None].to(model.device), model.network)
        if isinstance(logits, (tuple, list)):  # deep supervision heads: the first is the full-size one
            logits = logits[0]
        probs = torch.softmax(logits.float(), 1)[0]
        lab = probs.argmax(0)
        fg = lab > 0
        stats["foreground_voxels"] = int(fg.sum())
        if stats["foreground_voxels"]:  # the model's confidence where it called foreground
            ent = -(probs * torch.log(probs.clamp_min(1e-8))).sum(0) / float(np.log(probs.shape[0]))
            stats["foreground_entropy"] = float(ent[fg].mean())
        else:
            stats["foreground_entropy"] = float("nan")
        del probs
        timings["inference"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        want = tuple(image.GetSize())  # the loaded array is (i, j, k) in the file's voxel order
        arr = None
        if model.postprocessing is not None:
            # the bundle's own postprocessing, as MONAI's evaluator runs it on one item of the batch
            item = {**data, "pred": MetaTensor(logits[0].float().cpu(), meta=x.meta,
                                               applied_operations=list(x.applied_operations))}
            try:
                out = model.postprocessing(item)["pred"]
                out = out.argmax(0, keepdim=True) if out.shape[0] > 1 else out
                arr = np.asarray(out[0].cpu().numpy()).round().astype(np.int64)
            except Exception as exc:  # a postprocessing that needs what LLNAssist does not give
                arr, stats["postprocessing"] = None, f"argmax and inverse ({exc.__class__.__name__} in the bundle's)"
            if arr is not None and arr.shape != want:
                arr, stats["postprocessing"] = None, "argmax and inverse (the bundle's does not end on the image grid)"
            stats.setdefault("postprocessing", "the bundle's own")
        if arr is None:
            pred = MetaTensor(lab[None].to(torch.float32).cpu(), meta=x.meta,
                              applied_operations=list(x.applied_operations))
            inverted = Invertd(keys="pred", transform=model.preprocessing, orig_keys="image", nearest_interp=True,
                               to_tensor=True)({**data, "pred": pred})["pred"]
            arr = np.asarray(inverted[0].cpu().numpy()).round().astype(np.int64)
    if arr.shape != want:
        raise InputError(f"bundle {model.manifest['id']}: its preprocessing does not invert onto the image "
                         f"({arr.shape} vs {want}); it cannot be run by LLNAssist")
    lut = np.zeros(max(model.label_map) + 1, np.uint8)
    for src, dst in model.label_map.items():
        lut[src] = dst
    arr = np.where(arr < len(lut), lut[np.clip(arr, 0, len(lut) - 1)], 0).astype(np.uint8)
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
    out.CopyInformation(image)
    timings["postprocess"] = time.perf_counter() - t2
    return out
