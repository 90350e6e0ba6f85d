#!/usr/bin/env bash
# Set up a virtual environment in .venv from a fresh clone and install the package into it.
# Idempotent: a second run reuses the venv. Honors $PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
# --no-build-isolation: setup.py uses the installed torch to build the CUDA extension
# (when nvcc and a CUDA torch are present; EMO_KERNELS_SKIP_CUDA_BUILD=1 skips it).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation -e .
