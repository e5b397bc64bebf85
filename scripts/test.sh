#!/usr/bin/env bash
# Tests: builds .venv when missing, then lint and the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
# The PostgreSQL study tests start a real server from Debian's packages; install them when missing.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's postgresql for the PostgreSQL study tests..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
      || echo "warning: could not install postgresql; the PostgreSQL tests will fail" >&2
  fi
fi
# The browser-reader tests drive Debian's chromium with Playwright (no browser download).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser tests will fail" >&2
fi
# The packaging test configures, builds and installs the extension's CMake with a Slicer stand-in.
if ! command -v cmake >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's cmake for the packaging test..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ >/dev/null) \
    || echo "warning: could not install cmake; the packaging test will fail" >&2
fi
# The cohort statistics are checked against R computed in the tests (Debian's R and CRAN packages).
if ! command -v Rscript >/dev/null 2>&1 || ! Rscript -e 'library(survival); library(pROC); library(glmnet); library(rms)' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's R with survival, pROC, glmnet and rms for the cohort statistics tests..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      r-base-core r-cran-survival r-cran-proc r-cran-glmnet r-cran-rms >/dev/null) \
      || echo "warning: could not install R; the cohort statistics tests will fail" >&2
  fi
fi
# DICOM outputs are validated by dciodvfy (dicom3tools); the DICOMweb tests run a real PACS (Orthanc).
if { ! command -v dciodvfy >/dev/null 2>&1 || ! command -v Orthanc >/dev/null 2>&1 || \
     [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; } && [ "$(id -u)" = 0 ] && \
     command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's dicom3tools, orthanc and orthanc-dicomweb for the DICOM tests..." >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools orthanc \
    orthanc-dicomweb >/dev/null) || echo "warning: could not install them; the DICOM tests will fail" >&2
fi
.venv/bin/ruff check .
.venv/bin/python -m pytest -q Testing "$@"
