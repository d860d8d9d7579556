#!/usr/bin/env bash
# The larger settings of the small-scale reproduction on ONE GPU, within about 15 minutes
# (an H100/H200-class card; set up first with `pip install -e ".[dev]"` and your CUDA torch,
# see README):   bash experiments/gpu_15min.sh [OUTPUT_DIR]
# Model: the embedded SmolLM2-135M-Instruct. Two studies, each under a hard time limit so the
# script stays in budget (rerun it to continue: every run resumes where it stopped):
# 1. arithmetic variants: one full epoch over packaged:math-split/train.json (cutoff
#    256), greedy evaluation on the first 200 items of GSM8K, SVAMP, MultiArith, AddSub,
#    SingleEq, AQuA (math-split test files); 3 seeds for lora_notk vs lora_notk_mod.
# 2. commonsense variants: 300 records from each of the seven commonsense training sources
#    (PIQA/SIQA/WinoGrande: the hash half `half=train` of their test sets), evaluation on the
#    first 500 items of each test set (their `half=test`).
# The CPU settings of the committed reproduction are in experiments/cpu_reproduction.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/gpu}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
common=(--micro-batch-size 16 --eval-batch-size 64 --bf16)
timeout 420 modetune experiment variants --output-dir "$OUT/math" "${common[@]}" || echo "math: stopped (rerun to resume)"
D=packaged:llm-adapters
mix="$D/ARC-Challenge/train.json?n=300,$D/ARC-Easy/train.json?n=300,$D/boolq/train.json?n=300"
mix="$mix,$D/openbookqa/train.json?n=300,$D/piqa/test.json?half=train&n=300"
mix="$mix,$D/social_i_qa/test.json?half=train&n=300,$D/winogrande/test.json?half=train&n=300"
timeout 420 modetune experiment variants --config configs/experiments/commonsense.yaml --data "$mix" \
  --eval-limit 500 --output-dir "$OUT/commonsense" "${common[@]}" || echo "commonsense: stopped (rerun to resume)"
echo "reports: $OUT/math/report.md $OUT/commonsense/report.md"
