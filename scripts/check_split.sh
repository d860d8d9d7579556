#!/usr/bin/env bash
# Provenance check of the shipped arithmetic split: rebuild it with `modetune data split-arithmetic`
# from LLM-Adapters' own dataset folder (math_data.json is not shipped: every record of it is a test item)
# and compare byte for byte with src/modetune/data/files/math-split.
#   bash scripts/check_split.sh LLM-ADAPTERS-DATASET-DIR   (the folder holding math_data.json and <set>/test.json)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
source_dir="$(cd "${1:?give LLM-Adapters dataset folder (math_data.json, <set>/test.json)}" && pwd)"
if [[ ! -f "$source_dir/math_data.json" ]]; then
  echo "check_split: $source_dir/math_data.json not found; give LLM-Adapters' dataset folder as the argument" >&2
  exit 1
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
modetune data split-arithmetic --source "$source_dir" --output "$out/split"
diff -r "$out/split" src/modetune/data/files/math-split
echo "check_split: the rebuilt split is identical to the shipped one"
