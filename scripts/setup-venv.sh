#!/usr/bin/env bash
# Builds .venv/ at the repository root (idempotent) and installs the `llnassist` command there.
# Order matters: CPU torch 2.13.0 comes from the local wheel before anything can pull a CUDA build,
# and PyRadiomics only builds without build isolation, after numpy/setuptools/wheel/versioneer.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.llnassist-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ -x .venv/bin/llnassist ]; then
  exit 0
fi
echo "setting up .venv (first run takes a few minutes)..." >&2
python3 -m venv .venv
pip=".venv/bin/python -m pip"
$pip install -q --disable-pip-version-check numpy setuptools wheel versioneer
$pip install -q --disable-pip-version-check torch==2.13.0
$pip install -q --disable-pip-version-check --no-build-isolation pyradiomics  # 3.1.0 sdist; reports 3.0.1 (metadata slip)
# torch pinned in the same command: nnunetv2 (a test extra) would otherwise let pip replace it
$pip install -q --disable-pip-version-check -e '.[test]' torch==2.13.0
# nnunetv2 2.6.0 depends on the Python 2 `argparse` backport from PyPI; wherever site-packages comes
# before the standard library on the path (an installed extension's PYTHONPATH) it shadows the real one
$pip uninstall -q -y argparse >/dev/null 2>&1 || true
touch "$stamp"
