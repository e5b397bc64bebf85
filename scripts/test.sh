#!/usr/bin/env bash
# Tests: builds .venv when missing, then lint and the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q Testing "$@"
