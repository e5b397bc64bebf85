"""Calibrates and checks the domain gate (LLNAssistLib/domain.py).

Unseen phantoms (default seeds 910100-910129, the held-out evaluation set) must all pass both
stages; non-pelvic inputs must be refused. For every input: the stage that refused it, the time to
the refusal, and the measures the limits are set from (compartment volumes, node count, largest
short axis, foreground entropy). Inputs the first stage refuses are also run through the model
(as --force would) to show what the second stage would have said.

    .venv/bin/python benchmarks/calibrate_domain_gate.py --device cpu --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from LLNAssistLib import domain, foreign_inputs, phantom  # noqa: E402
from LLNAssistLib.body import body_mask  # noqa: E402
from LLNAssistLib.imageio import to_axial_canonical  # noqa: E402
from LLNAssistLib.model.inference import load_model, segment  # noqa: E402
from LLNAssistLib.nodes import extract_nodes  # noqa: E402
from LLNAssistLib.pipeline import _region_side_volume  # noqa: E402

PYRADIOMICS_DATA = REPO.parent / "shared" / "reference-data" / "radiomics" / "pyradiomics"


def phantom_image(seed: int, **kw) -> sitk.Image:
    return phantom.generate(seed, **kw).to_sitk()[0]


def output_measures(image: sitk.Image, model, synthetic: bool):
    stats: dict = {}
    labels = segment(image, model, stats=stats)
    canon = to_axial_canonical(image)
    body = body_mask(sitk.GetArrayViewFromImage(canon))
    nodes = extract_nodes(labels, image, body=body)
    lab = sitk.GetArrayFromImage(to_axial_canonical(labels))
    left = _region_side_volume(lab, canon, body)
    vols = domain.compartment_volumes(lab, left, float(np.prod(canon.GetSpacing())) / 1000.0)
    return domain.check_output(vols, nodes, stats, synthetic)


def run(name: str, image: sitk.Image, model, synthetic: bool, always_model: bool) -> dict:
    t = time.perf_counter()
    g_in = domain.check_input(image)
    t_in = time.perf_counter() - t
    row = {"input": name, "size": "x".join(map(str, image.GetSize())), "pre_ok": g_in.ok,
           "pre_s": round(t_in, 2), "pre_reason": "; ".join(g_in.reasons)[:90]}
    if g_in.ok or always_model:
        try:
            g_out = output_measures(image, model, synthetic)
        except Exception as exc:  # what the model makes of a foreign input is only reported here
            row.update({"post_ok": None, "post_reason": f"model failed: {exc.__class__.__name__}"})
            return row
        m = g_out.measures
        vols = list(m["compartments_ml"].values())
        row.update({"post_ok": g_out.ok, "post_reason": "; ".join(g_out.reasons)[:90],
                    "min_compartment_ml": round(min(vols), 1), "max_compartment_ml": round(max(vols), 1),
                    "n_nodes": m["n_nodes"], "max_short_mm": m["max_short_axis_mm"],
                    "entropy": m["foreground_entropy"]})
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="910100-910129")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "domain_gate.json"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    model = load_model(None, a.device)
    synthetic = bool(model.manifest.get("training_data", {}).get("synthetic"))
    lo, hi = (int(x) for x in a.seeds.split("-"))
    rows = []
    for seed in range(lo, hi + 1):
        rows.append(run(f"phantom {seed}", phantom_image(seed), model, synthetic, False))
        print(json.dumps(rows[-1]), flush=True)
    base = phantom_image(910001, size=384, slices=32, n_nodes=4)
    foreign = [("blank", foreign_inputs.filled(base, 0)), ("constant", foreign_inputs.filled(base, 300)),
               ("CT-like phantom", foreign_inputs.ct_like(base)),
               ("sagittal phantom 0.8x0.8x3.6", foreign_inputs.acquired_as(base, "sagittal")),
               ("coronal phantom 0.8x0.8x3.6", foreign_inputs.acquired_as(base, "coronal"))]
    for f in ("brain1_image.nrrd", "prostate_phantom_subvolume.nrrd"):
        if (PYRADIOMICS_DATA / f).is_file():
            foreign.append((f"PyRadiomics {f}", sitk.ReadImage(str(PYRADIOMICS_DATA / f))))
    rng = np.random.default_rng(0)
    noise = sitk.GetImageFromArray(rng.integers(0, 2000, size=(32, 384, 384)).astype(np.int16))
    noise.CopyInformation(base)
    foreign.append(("uniform noise, pelvic geometry", noise))
    for name, img in foreign:
        rows.append(run(name, img, model, synthetic, name not in ("blank", "constant")))
        print(json.dumps(rows[-1]), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")

    ph = [r for r in rows if r["input"].startswith("phantom")]
    print("\nUnseen phantoms:", len(ph), "refused before the model:", sum(not r["pre_ok"] for r in ph),
          "after:", sum(r.get("post_ok") is False for r in ph))
    for key in ("min_compartment_ml", "max_compartment_ml", "n_nodes", "max_short_mm", "entropy"):
        vals = [r[key] for r in ph if r.get(key) is not None]
        print(f"  {key:20s} min {min(vals):8.3f}  max {max(vals):8.3f}")
    print("\n| input | refused by | time to refusal (s) | reason | model output (as with --force) |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["input"].startswith("phantom"):
            continue
        stage = "input check" if not r["pre_ok"] else ("output check" if r.get("post_ok") is False else "NOT REFUSED")
        post = (f"{r.get('n_nodes')} nodes, compartments {r.get('min_compartment_ml')}-{r.get('max_compartment_ml')} "
                f"mL, entropy {r.get('entropy')}; {r.get('post_reason') or 'passes'}") if "post_ok" in r else "-"
        print(f"| {r['input']} | {stage} | {r['pre_s']} | {r['pre_reason'] or r.get('post_reason', '')} | {post} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
