"""How well the two morphology proxies separate the phantom's truth flags, on training seeds.

    .venv/bin/python benchmarks/calibrate_morphology.py [--seeds 1-40]

Prints sensitivity/specificity of border irregularity (1 - solidity on the key slice) against the
phantom's `irregular_border` flag, and of signal heterogeneity (CV inside the node on the key slice)
against `heterogeneous_signal`, over a grid of thresholds. The thresholds in LLNAssistLib/nodes.py
were read off this table (truth masks, seeds 1-40: irregularity 0.09 -> sens 0.97 / spec 0.93;
heterogeneity 0.12 -> sens 1.00 / spec 0.81, the misses being negative nodes with a fatty hilum).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from LLNAssistLib import phantom  # noqa: E402
from LLNAssistLib.evaluate import match_nodes  # noqa: E402
from LLNAssistLib.nodes import extract_nodes  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1-40")
    lo, hi = (int(x) for x in ap.parse_args().seeds.split("-"))
    rows = []
    for seed in range(lo, hi + 1):
        ph = phantom.generate(seed)
        img, lab = ph.to_sitk()
        nodes = extract_nodes(lab, img)
        pred = [{"centroid_r": n.centroid_ras[0], "centroid_a": n.centroid_ras[1], "centroid_s": n.centroid_ras[2]}
                for n in nodes]
        for i, j in match_nodes(ph.truth["nodes"], pred):
            t = ph.truth["nodes"][i]
            rows.append((t["irregular_border"], t["heterogeneous_signal"], nodes[j].border_irregularity,
                         nodes[j].signal_heterogeneity))
    print(f"{len(rows)} nodes from seeds {lo}-{hi}")
    print("threshold | irregularity sens | spec | heterogeneity sens | spec")
    for th in np.arange(0.04, 0.25, 0.01):
        cells = []
        for ti, vi in ((0, 2), (1, 3)):
            pos = np.array([r[vi] for r in rows if r[ti]], float)
            neg = np.array([r[vi] for r in rows if not r[ti]], float)
            cells += [f"{(pos >= th).mean():.2f}", f"{(neg < th).mean():.2f}"]
        print(f"{th:.2f} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
