#!/usr/bin/env bash
# One-command GPU acceptance check: bash benchmarks/gpu_check.sh [--out DIR] [--only STAGES]
# (GPU_CHECK_TINY=1: the same stages in a tiny CPU setting). See benchmarks/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
# the README's set-up makes .venv; PYTHON=... picks another interpreter (one with a CUDA torch)
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
