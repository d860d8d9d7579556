#!/usr/bin/env bash
# The test command: set everything up, then run the whole suite (a few minutes on 2 cores).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
ruff check src tests benchmarks
python -m pytest -q "$@"
