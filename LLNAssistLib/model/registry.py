"""Installed models: the bundled ones (Resources/models) and a user folder of site models
(`~/.llnassist/models`, or `LLNASSIST_MODELS`), managed with `llnassist models list|add|remove|info`.
`--model ID` finds a model in either; `--model PATH` still takes a folder directly.

Adding validates the model first (LLNAssist manifest and weights checksum; or an nnU-Net folder,
whose checkpoints get a manifest with their sha256 if it had none; or a MONAI bundle, whose configs,
weights and scripts get one) and copies only what running it needs into the user folder, published
whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..nnunet.model import MANIFEST as NNUNET_MANIFEST
from . import manifest as M
from .labelmap import LABEL_MAP_FILE

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")


def user_dir() -> Path:
    return Path(os.environ.get("LLNASSIST_MODELS") or Path.home() / ".llnassist" / "models")


def _manifest_of(folder: Path) -> Optional[dict]:
    for name in (M.MANIFEST, NNUNET_MANIFEST):
        if (folder / name).is_file():
            try:
                return json.loads((folder / name).read_text(encoding="utf-8"))
            except ValueError:
                return None
    return None


def installed() -> list[dict]:
    """Every model: id, kind, version, where, what it was trained on, how it did."""
    out = []
    for where, root in (("bundled", M.models_dir()), ("installed", user_dir())):
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            man = _manifest_of(folder)
            if man is None:
                continue
            td = man.get("training_data") or {}
            out.append({"id": folder.name, "kind": man.get("kind", "llnassist"), "version": man.get("version"),
                        "where": where, "path": str(folder), "synthetic": td.get("synthetic"),
                        "training_data": td.get("description"), "evaluation": _evaluation_line(man)})
    return out


def _evaluation_line(man: dict) -> str:
    ev = man.get("evaluation") or {}
    cv = ev.get("cross_validation_dice")
    if cv:
        vals = [v for fold in cv.values() for v in fold.values()]
        return f"cross-validation mean Dice {sum(vals) / len(vals):.3f} over {len(cv)} fold(s)" if vals else ""
    if "detection_sensitivity" in ev:  # `llnassist evaluate --write-manifest`
        what = "labelled cases" if (ev.get("data") or {}).get("kind") == "labelled cases" else "held-out cases"
        return (f"{ev.get('cases')} {what}: node detection {ev['detection_sensitivity']:.3f}, "
                f"{ev.get('false_positives_per_case', 0):.2f} false positives per case, patient status accuracy "
                f"{ev.get('patient_status_accuracy', float('nan')):.3f}")
    return ""


def resolve(model_id: str) -> Optional[Path]:
    """The folder of an installed (user) model id, or None."""
    folder = user_dir() / model_id
    return folder if _ID.match(model_id or "") and _manifest_of(folder) is not None else None


def add(path: str, model_id: Optional[str] = None) -> dict:
    from ..nnunet import model as nnunet_model
    from . import bundle

    src = Path(path)
    if not src.is_dir():
        raise InputError(f"{src} is not a model folder")
    if (src / M.MANIFEST).is_file():  # an LLNAssist model: manifest and weights checked
        man = M.read_manifest(src)
        M.verified_weights_path(src, man)
        files = [M.MANIFEST, man["weights"]]
    elif nnunet_model.is_nnunet_folder(src):
        man = nnunet_model.validate(src)
        files = ["dataset.json", "plans.json", *man["checkpoints"],
                 *[n for n in (NNUNET_MANIFEST, LABEL_MAP_FILE) if (src / n).is_file()]]
    elif bundle.is_bundle_folder(src):
        man = bundle.validate(src)
        files = [*man["files"], *[n for n in (bundle.MANIFEST, LABEL_MAP_FILE) if (src / n).is_file()]]
    else:
        raise InputError(f"{src} is neither an LLNAssist model (manifest.json), an nnU-Net trained-model folder nor "
                         "a MONAI bundle")
    model_id = model_id or man["id"]
    if not _ID.match(model_id):
        raise InputError(f"model id {model_id!r}: letters, digits, '.', '_' or '-' (give --id)")
    if model_id in {m["id"] for m in installed()}:
        raise InputError(f"a model {model_id} is already installed; remove it first or give another --id")
    root = user_dir()
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{model_id}.partial-", dir=root))
    try:
        for rel in files:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, stage / rel)
        if not (src / M.MANIFEST).is_file() and not (src / NNUNET_MANIFEST).is_file():
            # a foreign model: from now on its checkpoints (a bundle: all it runs) are held to these checksums
            man = {**man, "verified": True, "registered_from": str(src)}
            (stage / NNUNET_MANIFEST).write_text(json.dumps(man, indent=2) + "\n", encoding="utf-8")
        os.replace(stage, root / model_id)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return {"id": model_id, "path": str(root / model_id), "kind": man.get("kind", "llnassist")}


def remove(model_id: str) -> Path:
    folder = resolve(model_id)
    if folder is None:
        bundled = (M.models_dir() / model_id / M.MANIFEST).is_file()
        raise InputError(f"{model_id} is a bundled model and cannot be removed" if bundled else
                         f"no installed model {model_id}; see `llnassist models list`")
    shutil.rmtree(folder)
    return folder


def info(model_id: str) -> dict:
    folder = resolve(model_id) or (M.models_dir() / model_id if (M.models_dir() / model_id).is_dir() else None)
    man = _manifest_of(folder) if folder else None
    if man is None:
        raise InputError(f"no model {model_id}; see `llnassist models list`")
    return {"path": str(folder), **man}
