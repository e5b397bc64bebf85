"""Per-node radiomics time, PyRadiomics (107 features) vs the native engine (the score's 7 features).

    .venv/bin/python benchmarks/bench_radiomics.py [--cases 3]

Nodes come from phantom truth masks (seeds 930000+); preprocessing (crop, 1 mm resampling, N4,
normalisation) is timed separately because both engines share it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy import ndimage  # noqa: E402

from LLNAssistLib import phantom  # noqa: E402
from LLNAssistLib import radiomics as R  # noqa: E402
from LLNAssistLib.radiomics_native import features as native  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=3)
    a = ap.parse_args()
    pre, py, nat, worst = [], [], [], 0.0
    for seed in range(930000, 930000 + a.cases):
        ph = phantom.generate(seed, n_nodes=6)
        img, _ = ph.to_sitk()
        comp, n = ndimage.label(ph.labels >= 4, structure=np.ones((3, 3, 3)))
        for idx in range(1, n + 1):
            m = sitk.GetImageFromArray((comp == idx).astype(np.uint8))
            m.CopyInformation(img)
            t = time.perf_counter()
            pi, pm = R.preprocess(img, m, 1)
            pre.append(time.perf_counter() - t)
            t = time.perf_counter()
            f_py = R._pyradiomics_features(pi, pm)
            py.append(time.perf_counter() - t)
            t = time.perf_counter()
            f_nat = native(pi, pm)
            nat.append(time.perf_counter() - t)
            worst = max(worst, max(abs(f_nat[k] - f_py[k]) / max(abs(f_py[k]), 1e-12) for k in f_nat))
    print(f"nodes: {len(pre)}; largest relative difference native vs PyRadiomics: {worst:.1e}")
    print("step | median s/node | max s/node")
    print("--- | --- | ---")
    for name, v in (("preprocess (shared)", pre), ("PyRadiomics, 107 features", py), ("native, 7 features", nat)):
        print(f"{name} | {np.median(v):.3f} | {np.max(v):.3f}")


if __name__ == "__main__":
    main()
