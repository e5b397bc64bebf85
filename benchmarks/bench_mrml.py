"""MRML bridge costs on the bundled sample (what the Slicer module does after each user action).

    .venv/bin/python benchmarks/bench_mrml.py [--repeats 3]

Needs `out/demo` from `bash scripts/demo.sh`. Prints median seconds per operation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from LLNAssistLib import mrml_bridge as B  # noqa: E402

SAMPLE = REPO / "Resources" / "Sample" / "LLNPhantom900507"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default=str(REPO / "out" / "demo"))
    a = ap.parse_args()
    if not (Path(a.results) / "nodes.json").is_file():
        sys.exit(f"error: {a.results} has no analysis; run `bash scripts/demo.sh` first")
    truth = json.loads((SAMPLE / "truth.json").read_text(encoding="utf-8"))
    times: dict = {}

    def timed(name, fn, *args, **kw):
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        times.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    for _ in range(a.repeats):
        scene = B.new_scene()
        vol = timed("load volume", B.load_volume, scene, SAMPLE / "image.nii.gz")
        res = timed("load results (seg, lines, table)", B.load_results, scene, a.results, vol)
        timed("recompute, no radiomics", B.recompute, scene, vol, res.segmentation, radiomics=False)
        timed("recompute with radiomics (native)", B.recompute, scene, vol, res.segmentation,
              radiomics_engine="native")
        first = B.table_rows(res.table)[0]
        timed("delete node + recompute", B.delete_node, scene, vol, res.segmentation, int(first["node_id"]),
              radiomics=False)
        n = next(n for n in truth["nodes"] if abs(n["centroid_r"] - float(first["centroid_r"])) < 5)
        timed("click to segment + recompute", B.click_to_segment, scene, vol, res.segmentation,
              (n["centroid_r"], n["centroid_a"], n["centroid_s"]), radiomics=False)
        with tempfile.TemporaryDirectory() as d:
            centre = [float(first[k]) for k in ("centroid_r", "centroid_a", "centroid_s")]
            timed("render key image 400 px (EGL)", B.render_key_image, scene, vol, centre, Path(d) / "k.png")
            timed("save .mrb", B.save_mrb, scene, Path(d) / "c.mrb")
            timed("load .mrb", B.load_mrb, Path(d) / "c.mrb", str(Path(d) / "cache"))
    n_nodes = len(json.loads((Path(a.results) / "nodes.json").read_text(encoding="utf-8")))
    print(f"MRML bridge on the bundled sample ({n_nodes} nodes), median of {a.repeats}, seconds")
    print(f"{'operation':<38}{'median s':>10}")
    for name, xs in times.items():
        print(f"{name:<38}{statistics.median(xs):>10.3f}")


if __name__ == "__main__":
    main()
