#!/usr/bin/env bash
# The larger small-scale reproduction on ONE GPU, within about 15 minutes (an H100/H200-class
# card; set up first with `pip install -e ".[dev]"` and your CUDA torch, see README):
#   bash experiments/gpu_15min.sh [OUTPUT_DIR]
# The default model (SmolLM2-135M-Instruct), one epoch over the clean arithmetic split
# (../shared/data/math-split/train.json), cutoff 256, then greedy evaluation on the first
# 200 items of GSM8K, SVAMP, MultiArith, AddSub, SingleEq and AQuA (math-split test halves).
# Order: the defaults sweep (validation cross-entropy), then the variants table with three
# seeds for lora_notk vs lora_notk_mod. Every study resumes where it stopped if rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
common=(--micro-batch-size 16 --eval-batch-size 64 --bf16)
# each study gets a hard time limit so the whole script stays within budget; rerun to continue
timeout 240 modetune experiment sweep --output-dir "$OUT/sweep" "${common[@]}" || echo "sweep: stopped (rerun to resume)"
timeout 600 modetune experiment variants --output-dir "$OUT/variants" "${common[@]}" || echo "variants: stopped (rerun to resume)"
echo "reports: $OUT/sweep/report.md $OUT/variants/report.md"
