"""Per-stage time and peak memory of `analyze` on phantoms of three sizes; prints a table.

    .venv/bin/python benchmarks/bench_pipeline.py [--device cpu|cuda] [--threads 2] [--sizes 256x24,384x32,512x40]

Each size runs in its own process (peak RSS is that process's high-water mark), with torch and
OpenMP limited to --threads. Phantoms are generated first (not timed), 6 nodes each, seed 920000+.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ["load", "preprocess", "inference", "postprocess", "measurement", "radiomics", "write"]

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[4]))
from LLNAssistLib.pipeline import AnalysisOptions, analyze
opts = AnalysisOptions(device=sys.argv[3], radiomics=sys.argv[5] == "1", radiomics_engine=sys.argv[6])
t = time.perf_counter()
s = analyze(sys.argv[1], sys.argv[2], opts)
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0
print(json.dumps({"timings": s["timings_s"], "wall": wall, "peak_mb": peak, "gpu_mb": gpu,
                  "n_nodes": s["n_nodes"], "device": s["device"]}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="256x24,384x32,512x40")
    ap.add_argument("--no-radiomics", action="store_true")
    ap.add_argument("--radiomics-engine", choices=["auto", "pyradiomics", "native"], default="auto",
                    help="native where PyRadiomics cannot be installed (the lent GPU machine)")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from LLNAssistLib import phantom

    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, spec in enumerate(a.sizes.split(",")):
            size, slices = (int(x) for x in spec.split("x"))
            case = Path(tmp) / spec
            phantom.write(phantom.generate(920000 + n, size=size, slices=slices, n_nodes=6), case)
            # warm-up run (first CUDA/cuDNN use, file cache), then the measured run
            for rep in range(2 if a.device != "cpu" else 1):
                p = subprocess.run([sys.executable, "-c", CHILD, str(case / "image.nii.gz"), str(case / f"out{rep}"),
                                    a.device, str(a.threads), "0" if a.no_radiomics else "1",
                                    a.radiomics_engine],
                                   env=env, capture_output=True, text=True, cwd=REPO)
                if p.returncode:
                    sys.exit(f"benchmark failed for {spec}:\n{p.stderr[-2000:]}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["size"] = f"{size}x{size}x{slices}"
            rows.append(r)
    head = ["size", "device", "nodes"] + STAGES + ["total_s", "radiomics/node_s", "peak_RSS_MB", "peak_GPU_MB"]
    print(f"threads={a.threads}")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        t = r["timings"]
        per = t["radiomics"] / r["n_nodes"] if r["n_nodes"] and not a.no_radiomics else float("nan")
        cells = [r["size"], r["device"], str(r["n_nodes"])] + [f"{t[s]:.2f}" for s in STAGES] + [
            f"{t['total']:.2f}", f"{per:.2f}", f"{r['peak_mb']:.0f}", f"{r['gpu_mb']:.0f}"]
        print(" | ".join(cells))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
