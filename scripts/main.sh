#!/usr/bin/env bash
# The main job: set everything up, then `modetune train` on the embedded default model.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
modetune train "$@"
