#!/usr/bin/env bash
# Runs (or resumes) this study as registered: the code of 9784edb plus study-code.patch (PLAN.md,
# note 3: a run whose rows are committed is done without its adapter), its rows written here.
# From the repository root: bash docs/results/study-tuned/run.sh [CODE_DIR]
set -euo pipefail
ROOT="$(git rev-parse --show-toplevel)"
cd "$ROOT"
CODE="${1:-${TMPDIR:-/tmp}/modetune-study-tuned-code}"
if [ ! -d "$CODE" ]; then
  git worktree add --detach "$CODE" 9784edb
  git -C "$CODE" apply "$ROOT/docs/results/study-tuned/study-code.patch"
fi
source scripts/setup.sh
export PYTHONPATH="$CODE/src"
python -c 'import modetune, sys; assert modetune.__file__.startswith(sys.argv[1]), modetune.__file__' "$CODE"
exec modetune experiment tuned --data builtin:arithmetic-tn:1000 --val-size 64 \
  --datasets builtin-tn --data-dir none --test-size 600 --eval-limit none \
  --seeds 42,43,44,45,46,47,48,49 --tune-seeds 1,2 --lr-grid 0.5,1,2,3,4,6 \
  --tune-size 300 --select-tolerance 0.01 --equivalence-margin 0.015 \
  --final-member --jobs 2 --output-dir docs/results/study-tuned
