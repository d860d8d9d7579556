#!/usr/bin/env bash
cd /work/main
for pid in "$@"; do while kill -0 "$pid" 2>/dev/null; do sleep 10; done; done
echo "$(date +%T) phase2 start" >> logs/queue.log
mkdir -p runs/experiments/math
[ -d runs/experiments/math/lora_notk-s42 ] || cp -r runs/experiments/sweep/lora_notk-s42 runs/experiments/math/
[ -d runs/experiments/math/lora_notk_mod-s42 ] || cp -r runs/experiments/sweep/lam1-final-normsonly-s42 runs/experiments/math/lora_notk_mod-s42
M="--max-steps 24 --val-size 64 --eval-limit 50 --output-dir runs/experiments/math"
C="--config configs/experiments/commonsense.yaml"
OMP_NUM_THREADS=1 .venv/bin/modetune experiment variants $M --only lora_notk-s42 > logs/math-notk.log 2>&1 &
OMP_NUM_THREADS=1 .venv/bin/modetune experiment variants $M --only lora_notk_mod-s42 > logs/math-mod.log 2>&1 &
wait
echo "$(date +%T) math done" >> logs/queue.log
OMP_NUM_THREADS=1 .venv/bin/modetune experiment topk $C --only k1-s42 > logs/cs-k1.log 2>&1 &
OMP_NUM_THREADS=1 .venv/bin/modetune experiment topk $C --only k2-s42 > logs/cs-k2.log 2>&1 &
wait
echo "$(date +%T) k1 k2 done" >> logs/queue.log
OMP_NUM_THREADS=1 .venv/bin/modetune experiment topk $C --only k4-s42 > logs/cs-k4.log 2>&1 &
OMP_NUM_THREADS=1 .venv/bin/modetune experiment topk $C --only k5-s42 > logs/cs-k5.log 2>&1 &
wait
echo "$(date +%T) k4 k5 done" >> logs/queue.log
