"""A site nnU-Net model run by nnU-Net's own predictor and by LLNAssist, side by side on the same
phantom image: time, peak memory (each in its own process), and how many voxels get the same label.

    .venv/bin/python benchmarks/bench_nnunet.py --model NNUNET_MODEL_FOLDER [--size 384 --slices 32]

Both run mirroring off, step 0.5, Gaussian blending, on the CPU with --threads threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_RUN = r'''
import json, os, resource, sys, time
import numpy as np, SimpleITK as sitk, torch
which, model, image, out, threads = sys.argv[1:6]
torch.set_num_threads(int(threads))
img = sitk.ReadImage(image)
t0 = time.perf_counter()
if which == "nnunet":
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=torch.device("cpu"),
                        perform_everything_on_device=False, verbose=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(model, use_folds=None)
    t1 = time.perf_counter()
    arr = sitk.GetArrayFromImage(img).astype(np.float32)[None]
    seg = p.predict_single_npy_array(arr, {"spacing": list(img.GetSpacing())[::-1]}, None, None, False)
    stats = {}
else:
    from pathlib import Path
    from LLNAssistLib.nnunet import model as NM
    NM.CROP_TO_BODY = which == "llnassist"  # "llnassist-whole": every tile, as nnU-Net
    m = NM.load(Path(model), "cpu")
    t1 = time.perf_counter()
    stats = {}
    seg = sitk.GetArrayFromImage(NM.segment(img, m, stats=stats))
t2 = time.perf_counter()
np.save(out, seg.astype(np.uint8))
print(json.dumps({"load_s": t1 - t0, "predict_s": t2 - t1,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "cropped": stats.get("cropped_to_body"), "completed": stats.get("completed_beyond_box", False)}))
'''


RUNS = {"nnunet": "nnUNetPredictor (nnU-Net 2.6.0)", "llnassist-whole": "LLNAssist, every tile",
        "llnassist": "LLNAssist, body box (default)"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--seed", type=int, default=930500)
    ap.add_argument("--spacing", type=float, default=None,
                    help="in-plane pixel size in mm (default: the phantom's own); 1.3 gives a 500 mm field of view")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "nnunet_cpu2.txt"))
    a = ap.parse_args()
    import numpy as np

    from LLNAssistLib import phantom

    work = Path(tempfile.mkdtemp(prefix="lln-bench-nnunet-"))
    phantom.write(phantom.generate(a.seed, size=a.size, slices=a.slices, spacing=a.spacing, n_nodes=4),
                  work / "case")
    image = work / "case" / "image.nii.gz"
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), nnUNet_def_n_proc=str(a.threads),
               nnUNet_raw=str(work), nnUNet_preprocessed=str(work), nnUNet_results=str(work))
    res = {}
    for which in RUNS:
        p = subprocess.run([sys.executable, "-c", _RUN, which, a.model, str(image), str(work / f"{which}.npy"),
                            str(a.threads)], cwd=REPO, env=env, capture_output=True, text=True, check=True)
        res[which] = json.loads(p.stdout.strip().splitlines()[-1])
    ref = np.load(work / "nnunet.npy")
    import SimpleITK as sitk

    from LLNAssistLib.body import body_mask
    from LLNAssistLib.nnunet.model import BODY_MARGIN_MM, _box

    img = sitk.ReadImage(str(image))
    arr = sitk.GetArrayFromImage(img)
    box = _box(body_mask(arr), list(img.GetSpacing())[::-1], BODY_MARGIN_MM)
    inside = np.zeros(ref.shape, bool)
    inside[box] = True
    outside = float((ref[~inside] > 0).sum()) / ref.size
    man = json.loads((Path(a.model) / "llnassist.json").read_text(encoding="utf-8")) \
        if (Path(a.model) / "llnassist.json").is_file() else {}
    tr = man.get("training", {})
    lines = [f"nnU-Net model {Path(a.model).name} ({tr.get('plan', '?')} plan, {tr.get('epochs', '?')} epochs x "
             f"{tr.get('iterations_per_epoch', '?')} iterations, {len(man.get('folds', []))} fold(s)); phantom "
             f"{a.size}x{a.size}x{a.slices}" + (f" at {a.spacing} mm" if a.spacing else "") + "; CPU, "
             f"{a.threads} threads; {time.strftime('%Y-%m-%d')}; nnU-Net's foreground: {(ref > 0).mean():.4f} "
             f"of the voxels, {outside:.4f} outside the body box (+{BODY_MARGIN_MM:.0f} mm)", "",
             f"{'run':<31} {'load s':>7} {'predict s':>10} {'peak MB':>8} {'speed-up':>9} {'agreement':>10} "
             f"{'in box':>8}  min label Dice"]
    for which, name in RUNS.items():
        r, ours = res[which], np.load(work / f"{which}.npy")
        dice = [2 * ((ref == v) & (ours == v)).sum() / max(1, (ref == v).sum() + (ours == v).sum())
                for v in range(1, 6) if (ref == v).any() or (ours == v).any()]
        lines.append(f"{name:<31} {r['load_s']:>7.2f} {r['predict_s']:>10.2f} {r['peak_mb']:>8.0f} "
                     f"{res['nnunet']['predict_s'] / r['predict_s']:>8.2f}x {(ref == ours).mean():>10.5f} "
                     f"{(ref[box] == ours[box]).mean():>8.5f}  {min(dice):.4f}")
    lines += ["", "speed-up: nnU-Net's predict time / the run's; agreement: voxels with nnU-Net's label (in box: "
              "inside the body box); body box: tiles skipped " + str(res["llnassist"]["cropped"])
              + f", the model called foreground at its edge so the tiles beyond were added: "
              f"{res['llnassist']['completed']}"]
    text = "\n".join(lines)
    print(text)
    Path(a.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
