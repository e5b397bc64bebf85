"""`llnassist train --framework nnunet`: nnU-Net v2's planning, preprocessing and training of an
exported dataset (`llnassist dataset export`), fold by fold, resumable, then an LLNAssist manifest
beside the trained model (labels, training data, command, versions, checkpoint sha256, the
cross-validation Dice).

nnU-Net reads its folders from environment variables at import and starts worker processes, so
the work runs in a child process (`python -m LLNAssistLib.nnunet.train`) with its own environment;
the parent only checks the inputs and relays progress.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import InputError
from .model import MANIFEST

TRAINER = "LLNAssistTrainer"
PLANS = "nnUNetPlans"
# A plan small enough for CPU tests and smoke runs: 16x64x64 patches, four stages of 8-64 features.
TINY_PLAN = {"patch_size": [16, 64, 64], "batch_size": 2, "features": [8, 16, 32, 64]}


def dataset_info(folder: Path) -> tuple[int, str]:
    m = re.match(r"^Dataset(\d{3})_([A-Za-z0-9_-]+)$", folder.name)
    if not m:
        raise InputError(f"{folder} is not an nnU-Net raw dataset folder (DatasetNNN_NAME); make one with "
                         "`llnassist dataset export`")
    for need in ("dataset.json", "imagesTr", "labelsTr"):
        if not (folder / need).exists():
            raise InputError(f"{folder} lacks {need}; export the dataset again with `llnassist dataset export`")
    return int(m.group(1)), m.group(2)


def parse_folds(text: str) -> list[int]:
    try:
        if "-" in text:
            a, b = (int(x) for x in text.split("-"))
            folds = list(range(a, b + 1))
        else:
            folds = [int(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"--folds {text!r}: give e.g. 0-4 or 0,2") from None
    if not folds or any(f < 0 or f > 4 for f in folds):
        raise InputError(f"--folds {text!r}: folds are 0 to 4")
    return folds


def model_folder(out: Path, dataset_name: str, configuration: str) -> Path:
    return out / "results" / dataset_name / f"{TRAINER}__{PLANS}__{configuration}"


def train(dataset: str, out: str, configuration: str = "3d_fullres", folds: str = "0-4", device: str = "cpu",
          epochs: int = 1000, iterations_per_epoch: int = 250, plan: str = "default", processes: int = 2,
          data_description: str = "", synthetic: bool = False) -> Path:
    """Runs the child process; returns the trained model folder (with its LLNAssist manifest)."""
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise InputError("nnU-Net training needs nnunetv2; install it with `pip install nnunetv2==2.6.0 "
                         "torch==<your torch version>` in one command (README: Site models)") from None
    ds = Path(dataset).resolve()
    dataset_id, _ = dataset_info(ds)
    if configuration not in ("3d_fullres", "2d"):
        raise InputError(f"--configuration {configuration}: use 3d_fullres (as Qiao et al.) or 2d")
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device {device}: use cpu or cuda")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError("--device cuda, but this PyTorch sees no CUDA GPU; use --device cpu (slow) or a GPU "
                             "machine (README: Site models, GPU recipe)")
    if plan not in ("default", "tiny"):
        raise InputError(f"--plan {plan}: use default or tiny (tests and smoke runs only)")
    if epochs < 1 or iterations_per_epoch < 1:
        raise InputError("--epochs and --iterations-per-epoch must be at least 1")
    parse_folds(folds)
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, nnUNet_raw=str(ds.parent), nnUNet_preprocessed=str(out_dir / "preprocessed"),
               nnUNet_results=str(out_dir / "results"), nnUNet_def_n_proc=str(max(1, processes)),
               nnUNet_n_proc_DA=str(max(0, processes)), PYTHONUNBUFFERED="1")
    args = {"dataset": str(ds), "dataset_id": dataset_id, "out": str(out_dir), "configuration": configuration,
            "folds": parse_folds(folds), "device": device, "epochs": epochs,
            "iterations_per_epoch": iterations_per_epoch, "plan": plan, "processes": processes,
            "data_description": data_description, "synthetic": synthetic,
            "command": " ".join(["llnassist", *sys.argv[1:]]) if sys.argv else ""}
    proc = subprocess.run([sys.executable, "-m", "LLNAssistLib.nnunet.train", json.dumps(args)], env=env,
                          cwd=str(Path(__file__).resolve().parents[2]))
    if proc.returncode != 0:
        raise RuntimeError(f"nnU-Net training stopped with exit status {proc.returncode}; rerun the same command "
                           "to resume")
    return model_folder(out_dir, ds.name, configuration)


# --- the child process -------------------------------------------------------------------------------
def _say(stage: str, text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {stage}: {text}", flush=True)


def _tiny(plans_path: Path, configuration: str) -> None:
    plans = json.loads(plans_path.read_text(encoding="utf-8"))
    cfg = plans["configurations"][configuration]
    dims = 3 if configuration.startswith("3d") else 2
    n = len(TINY_PLAN["features"])
    cfg["patch_size"] = TINY_PLAN["patch_size"][-dims:]
    cfg["batch_size"] = TINY_PLAN["batch_size"]
    arch = cfg["architecture"]["arch_kwargs"]
    arch["n_stages"] = n
    arch["features_per_stage"] = TINY_PLAN["features"]
    arch["kernel_sizes"] = [[3] * dims] * n
    arch["strides"] = [[1] * dims] + ([[1, 2, 2]] if dims == 3 else [[2, 2]]) * (n - 1)
    arch["n_conv_per_stage"] = [2] * n
    arch["n_conv_per_stage_decoder"] = [2] * (n - 1)
    plans_path.write_text(json.dumps(plans, indent=1), encoding="utf-8")


def _cv_figures(folder: Path, folds: list[int]) -> dict:
    """Mean validation Dice per label and fold from nnU-Net's own validation summaries."""
    from .. import conventions as C

    out = {}
    for f in folds:
        summary = folder / f"fold_{f}" / "validation" / "summary.json"
        if not summary.is_file():
            continue
        s = json.loads(summary.read_text(encoding="utf-8"))
        per = s.get("mean", {})
        out[str(f)] = {C.LABEL_NAMES.get(int(k), k): round(float(v["Dice"]), 4) for k, v in per.items()
                       if str(k).isdigit() and v.get("Dice") == v.get("Dice")}
    return out


def write_manifest(folder: Path, args: dict, dataset: Path) -> dict:
    import nnunetv2
    import torch

    from .. import conventions as C
    from ..atomic import write_text
    from ..model.manifest import sha256_file
    from .trainer import CE_WEIGHT, DICE_WEIGHT

    ckpts = sorted(folder.glob("fold_*/checkpoint_final.pth"))
    prov_path = dataset / "provenance.json"
    prov = json.loads(prov_path.read_text(encoding="utf-8")) if prov_path.is_file() else {}
    reviewers = sorted({c.get("reviewed_by") or "?" for c in prov.get("cases", [])})
    n = json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))["numTraining"]
    desc = args["data_description"] or (f"{n} reviewed cases of {dataset.name} (llnassist dataset export), reviewed "
                                        f"by {', '.join(reviewers) or 'unknown'}")
    try:
        from importlib.metadata import version

        nnunet_version = version("nnunetv2")
    except Exception:
        nnunet_version = getattr(nnunetv2, "__version__", "?")
    man = {
        "id": f"site-{dataset.name.lower()}-{args['configuration']}",
        "version": time.strftime("%Y%m%d"),
        "kind": "nnunet",
        "framework": f"nnU-Net v2 ({TRAINER}: nnUNetTrainerNoMirroring network and inference, Dice:CE "
                     f"{DICE_WEIGHT}:{CE_WEIGHT})",
        "configuration": args["configuration"],
        "folds": sorted(int(p.parent.name.split("_")[1]) for p in ckpts),
        "checkpoints": {str(p.relative_to(folder)): sha256_file(p) for p in ckpts},
        "labels": {str(k): C.LABEL_NAMES[k] for k in range(C.NUM_CLASSES)},
        "inference": {"mirroring": False, "ensemble": "mean of the folds' softmax"},
        "training_data": {"description": desc, "synthetic": bool(args["synthetic"]), "n_cases": n,
                          "dataset": dataset.name,
                          "provenance_sha256": sha256_file(prov_path) if prov_path.is_file() else None},
        "training": {"command": args["command"], "epochs": args["epochs"],
                     "iterations_per_epoch": args["iterations_per_epoch"], "plan": args["plan"],
                     "device": args["device"], "loss": {"dice": DICE_WEIGHT, "cross_entropy": CE_WEIGHT}},
        "versions": {"nnunetv2": nnunet_version, "torch": torch.__version__},
        "evaluation": {"cross_validation_dice": _cv_figures(folder, args["folds"])},
        "notice": (C.SYNTHETIC_MODEL_NOTICE if args["synthetic"] else
                   "Trained on this site's reviewed cases; check its cross-validation before clinical reading."),
    }
    write_text(folder / MANIFEST, json.dumps(man, indent=2) + "\n")
    return man


def _child(args: dict) -> None:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    from ..model.checkpoint import load_checkpoint
    from .trainer import LLNAssistTrainer

    ds, out = Path(args["dataset"]), Path(args["out"])
    did, cfg, nproc = args["dataset_id"], args["configuration"], max(1, args["processes"])
    pre = out / "preprocessed" / ds.name
    plans_path = pre / f"{PLANS}.json"
    if not plans_path.is_file():
        _say("plan", "dataset fingerprint (nnU-Net's integrity check included)")
        extract_fingerprints([did], check_dataset_integrity=True, num_processes=nproc)
        _say("plan", "experiment planning")
        plan_experiments([did])
        if args["plan"] == "tiny":
            _tiny(plans_path, cfg)
    data_dir = pre / f"{PLANS}_{cfg}"
    n = load_json(str(ds / "dataset.json"))["numTraining"]
    if not data_dir.is_dir() or len([p for p in data_dir.iterdir() if p.suffix in (".npz", ".b2nd", ".pkl")]) < n:
        _say("preprocess", f"{n} cases, configuration {cfg}")
        preprocess([did], configurations=(cfg,), num_processes=(nproc,))
    if (ds / "splits_final.json").is_file():  # the patient-level folds of the export
        shutil.copyfile(ds / "splits_final.json", pre / "splits_final.json")
    plans = load_json(str(plans_path))
    dataset_json = load_json(str(pre / "dataset.json"))
    device = torch.device(args["device"])
    if device.type == "cpu":
        torch.set_num_threads(nproc)
    folder = None
    for fold in args["folds"]:
        trainer = LLNAssistTrainer(plans=plans, configuration=cfg, fold=fold, dataset_json=dataset_json, device=device)
        trainer.num_epochs = args["epochs"]
        trainer.num_iterations_per_epoch = args["iterations_per_epoch"]
        trainer.num_val_iterations_per_epoch = max(1, args["iterations_per_epoch"] // 5)
        folder = Path(trainer.output_folder_base)
        fold_dir = Path(trainer.output_folder)
        if (fold_dir / "checkpoint_final.pth").is_file() and (fold_dir / "validation" / "summary.json").is_file():
            _say("train", f"fold {fold} already trained and validated")
            continue
        if (fold_dir / "checkpoint_final.pth").is_file():
            trainer.load_checkpoint(load_checkpoint(fold_dir / "checkpoint_final.pth"))
        else:
            if (fold_dir / "checkpoint_latest.pth").is_file():
                _say("train", f"fold {fold}: resuming")
                trainer.load_checkpoint(load_checkpoint(fold_dir / "checkpoint_latest.pth"))
            _say("train", f"fold {fold}: {args['epochs']} epochs x {args['iterations_per_epoch']} iterations on "
                          f"{device}")
            trainer.run_training()
        _say("validate", f"fold {fold}")
        trainer.perform_actual_validation(False)
    if folder is None:
        return
    man = write_manifest(folder, args, ds)
    _say("done", f"model {folder} ({len(man['checkpoints'])} fold(s)); cross-validation Dice "
                 f"{json.dumps(man['evaluation']['cross_validation_dice'])}")


if __name__ == "__main__":  # nnU-Net's worker processes re-import this module: keep the work here
    _child(json.loads(sys.argv[1]))
