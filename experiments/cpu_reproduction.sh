#!/usr/bin/env bash
# The committed small-scale reproduction (docs/results/), exactly as it was run on the 2-core
# CPU reference machine: bash experiments/cpu_reproduction.sh
# Every command resumes where it stopped, so the script can be interrupted and rerun; the
# runs of one study folder are shared by the studies that name them (same settings, checked).
# Budget: SmolLM2-135M-Instruct (embedded), 24 optimizer steps of 16 records per run, greedy.
# On 2 cores each run is 6-8 min of training plus about 3 min of evaluation; runs/ holds
# everything. (The committed runs ran two at a time, one thread each, with --only NAME.)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
export="python experiments/export_results.py"

# 1. Settle the MoD defaults on validation cross-entropy (arithmetic, one seed).
modetune experiment sweep --max-steps 24 --val-size 64 --output-dir runs/experiments/sweep
$export runs/experiments/sweep docs/results/sweep

# 2. Commonsense (the main testbed at this scale): 64 records from each of the 7 sets
#    (PIQA/SIQA/WinoGrande: the hash half of their test sets), first 100 test items of each.
C=configs/experiments/commonsense.yaml
python benchmarks/bench_topk.py --config "$C"   # dense vs Top-K wall-clock, for the topk study's report
for study in variants ablations motivation sparsity topk; do   # topk: K = 1, 2 (3 = dense), k = 1..5
  modetune experiment "$study" --config "$C"
done
$export runs/experiments/commonsense docs/results/commonsense

# 3. Arithmetic, the key pair only: the sweep's lora_notk-s42 and lam1-final-normsonly-s42
#    (= lora_notk_mod with the new defaults; the settings check verifies it) are evaluated on
#    the first 50 items of each math-split test set.
mkdir -p runs/experiments/math
[ -d runs/experiments/math/lora_notk-s42 ] || cp -r runs/experiments/sweep/lora_notk-s42 runs/experiments/math/
[ -d runs/experiments/math/lora_notk_mod-s42 ] || \
  cp -r runs/experiments/sweep/lam1-final-normsonly-s42 runs/experiments/math/lora_notk_mod-s42
modetune experiment variants --max-steps 24 --val-size 64 --eval-limit 50 --output-dir runs/experiments/math \
  --only lora_notk-s42,lora_notk_mod-s42
$export runs/experiments/math docs/results/math
