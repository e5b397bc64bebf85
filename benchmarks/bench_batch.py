"""Cohort throughput of `llnassist batch`: cases per hour with 1 and 2 local workers on this
machine, and the peak memory of the largest worker process.

    .venv/bin/python benchmarks/bench_batch.py --cases 4 --workers 1,2

Each configuration runs the real CLI in its own process on fresh copies of the same phantom
cases (384 x 384 x 32, radiomics with the native engine, report images with matplotlib, CPU);
peak memory is the largest ru_maxrss among the CLI and its worker processes.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from LLNAssistLib import phantom  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "batch_cpu2.txt"))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lln-bench-batch-"))
    with open(work / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "image"])
        for i in range(a.cases):
            phantom.write(phantom.generate(920000 + i, size=384, slices=32, n_nodes=4), work / f"C{i}")
            w.writerow([f"C{i}", f"C{i}/image.nii.gz"])
    lines = [f"llnassist batch, {a.cases} phantom cases 384x384x32 (4 nodes each), CPU, {os.cpu_count()} cores",
             "| workers | wall time (s) | s per case | cases per hour | peak RSS of the largest process |",
             "|---|---|---|---|---|"]
    env = dict(os.environ, LLNASSIST_KEY_IMAGES="matplotlib")
    for n in (int(x) for x in a.workers.split(",")):
        out = work / f"out{n}"
        t0 = time.perf_counter()
        # each configuration in its own child, so RUSAGE_CHILDREN reads that run's processes only
        code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
        p = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "LLNAssistLib.cli", "batch",
                            str(work / "cases.csv"), "--out", str(out), "--workers", str(n), "--device", "cpu",
                            "--radiomics-engine", "native", "--quiet"], capture_output=True, text=True, env=env,
                           cwd=REPO)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            print(p.stdout, p.stderr)
            return 1
        peak_mb = int(p.stdout.strip().splitlines()[-1]) / 1024
        lines.append(f"| {n} | {wall:.1f} | {wall / a.cases:.1f} | {3600 * a.cases / wall:.0f} | {peak_mb:.0f} MB |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
