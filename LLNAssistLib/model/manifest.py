"""Model manifests: what a model is, how it was trained, how well it did; checksum-verified loading."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from .. import conventions as C
from ..atomic import write_text
from ..errors import InputError
from ..resources import models_dir

MANIFEST = "manifest.json"
DEFAULT_MODEL_ID = "llnassist-phantom-dynunet25d"


def new_manifest(model_id: str, version: str, sha256: str, arch: dict, target_spacing: float,
                 train_config: dict, command: str, iterations_done: int, history: list) -> dict:
    return {
        "id": model_id,
        "version": version,
        "weights": "model.pt",
        "sha256": sha256,
        "framework": "MONAI DynUNet (PyTorch state dict, float16)",
        "architecture": arch,
        "input": {
            "modality": "MR T2-weighted axial",
            "channels": "2.5D: slice k-1, k, k+1 of the acquired axial slices",
            "spacing_mm": [target_spacing, target_spacing, None],
            "spacing_note": "in-plane resampled to this spacing; slices kept as acquired",
            "normalisation": "z-score over the body mask (voxels > 0.2 x 99th percentile, largest "
                             "component, holes filled), clipped to [-5, 5]",
            "crop": "body bounding box + 6 mm",
            "orientation": "axes permuted/flipped to the closest LPS order before inference (no resampling)",
        },
        "inference": {"roi_size": [256, 256], "overlap": 0.25, "blend": "gaussian", "mirroring": False},
        "labels": {str(k): C.LABEL_NAMES[k] for k in range(C.NUM_CLASSES)},
        "training_data": {
            "description": "Synthetic pelvic T2WI phantoms from LLNAssistLib.phantom (no patient data): seeds "
                           f"{train_config['first_seed']}..{train_config['first_seed'] + train_config['n_cases'] - 1}",
            "synthetic": True,
        },
        "training": {"command": command, "config": train_config, "iterations": iterations_done,
                     "loss_history": history[-20:]},
        "evaluation": None,
        "timings": {},
        "notice": C.SYNTHETIC_MODEL_NOTICE,
    }


def write_manifest(model_dir: str | os.PathLike, manifest: dict) -> None:
    write_text(Path(model_dir) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def available_models() -> list[str]:
    """Ids of the bundled models (source tree or installed extension: see resources.py)."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file())


def resolve_model_dir(model: Optional[str]) -> Path:
    """A model id (bundled) or a folder/manifest path -> the model folder; InputError if neither."""
    if not model:
        model = DEFAULT_MODEL_ID
    p = Path(model)
    if p.is_file() and p.name == MANIFEST:
        return p.parent
    if p.is_dir():
        if not (p / MANIFEST).is_file():
            raise InputError(f"model folder {p} has no {MANIFEST}; point --model to a folder made by "
                             "`llnassist train` or to a bundled model id")
        return p
    if (models_dir() / model / MANIFEST).is_file():
        return models_dir() / model
    from .registry import resolve

    installed = resolve(model)
    if installed is not None and (installed / MANIFEST).is_file():
        return installed
    avail = ", ".join(available_models()) or "none"
    raise InputError(f"unknown model {model!r}; give a bundled model id ({avail}) or a model folder path")


def read_manifest(model_dir: Path) -> dict:
    try:
        man = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {model_dir / MANIFEST}: {exc.__class__.__name__}; reinstall the model") \
            from None
    for key in ("id", "version", "weights", "sha256", "architecture", "input"):
        if key not in man:
            raise InputError(f"{model_dir / MANIFEST} lacks {key!r}; it is not an LLNAssist model manifest")
    return man


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_weights_path(model_dir: Path, man: dict) -> Path:
    w = model_dir / man["weights"]
    if not w.is_file():
        raise InputError(f"model weights {w} are missing; reinstall the model")
    got = sha256_file(w)
    if got != man["sha256"]:
        raise InputError(f"model weights {w} fail their checksum (sha256 {got[:12]}... != manifest "
                         f"{man['sha256'][:12]}...); the file is corrupt or was replaced - reinstall it")
    return w


def check_listed(folder: Path, listed: dict, sums: dict, manifest_name: str) -> None:
    """A foreign model's files against its LLNAssist manifest: every listed file present with its
    sha256, and nothing that would run left unlisted (a file slipped in after registration)."""
    from ..errors import InputError

    for rel, want in listed.items():
        got = sums.get(rel)
        if got is None:
            raise InputError(f"{folder / rel} is listed in {manifest_name} but missing; reinstall the model")
        if got != want:
            raise InputError(f"{folder / rel} fails its checksum (sha256 {got[:12]}... != {manifest_name} "
                             f"{want[:12]}...); the file is corrupt or was replaced - reinstall the model")
    extra = sorted(set(sums) - set(listed))
    if extra:
        raise InputError(f"{folder} holds {', '.join(extra)}, not listed in {manifest_name}; remove them or register "
                         "the model again")
