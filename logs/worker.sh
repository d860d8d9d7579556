#!/usr/bin/env bash
# usage: worker.sh WAITPID "study:run" ...
cd /work/main
wait_pid=$1; shift
while kill -0 "$wait_pid" 2>/dev/null; do sleep 10; done
for job in "$@"; do
  study=${job%%:*}; run=${job#*:}
  echo "$(date +%T) start $study $run" >> logs/queue.log
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/modetune experiment "$study" --config configs/experiments/commonsense.yaml --only "$run" > "logs/cs-$run.log" 2>&1
  echo "$(date +%T) done $study $run rc=$?" >> logs/queue.log
done
