#!/usr/bin/env bash
# Trains the bundled model on a lent GPU machine (device tool) and exports it under $OUT/model.
# The GPU image has torch but not MONAI: its wheel travels in .whl/ (see README, "Retraining").
# The command recorded in the manifest reproduces the run anywhere (CPU too, much slower).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -m LLNAssistLib.cli train --out /tmp/ckpt --cases "${CASES:-300}" --first-seed 1 --seed 0 \
  --iterations "${ITERS:-10000}" --batch 32 --patch 256 --lr 2e-3 --device cuda --workers 15 --restart \
  --max-seconds "${MAX_S:-400}" --export "$OUT/model" 2>&1 | tee "$OUT/train.log" | grep -E "prepared|000/|exported|budget"
