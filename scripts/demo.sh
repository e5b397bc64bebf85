#!/usr/bin/env bash
# Demo: analyse the bundled synthetic sample with the bundled model (CPU unless a GPU is present).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
.venv/bin/llnassist analyze Resources/Sample/LLNPhantom900507/image.nii.gz --out out/demo "$@"
echo "report: out/demo/report.html  nodes: out/demo/nodes.csv  Slicer: out/demo/segmentation.seg.nrrd"
echo "truth for comparison: Resources/Sample/LLNPhantom900507/truth.json"
