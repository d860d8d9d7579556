#!/usr/bin/env bash
# serve_check.sh: proves that the plain model modetune exports (`modetune export --final-member`: the
# final member alone, LoRA merged, a standard LlamaForCausalLM folder) is read identically by real
# serving engines, and that the ensemble export is refused by llama.cpp's converter instead of being
# silently converted as its base model.
#
# It trains a tiny adapter (`--config quick`), exports the final member and the ensemble, renders prompts
# as `modetune generate` does, and takes greedy token ids and last-position logits from transformers 5
# (the project venv) as the reference. It then compares, per prompt (exact greedy ids, max abs logit diff):
#   * llama.cpp: llama-cpp-python 0.3.36 built from its source package (CPU only); the folder converted
#     to GGUF f32 and f16 by the converter inside it (vendor/llama.cpp/convert_hf_to_gguf.py), run with
#     llama_cpp.Llama; plus the ensemble refusal and the converter's architecture registry against
#     tests/data/llama_cpp_text_architectures.txt;
#   * transformers 4.57.6 (the converter's own pinned requirements): the last 4.x reading the folder;
#   * ONNX Runtime: optimum-cli export onnx (optimum-onnx), run by ORTModelForCausalLM.
# Results: benchmarks/results/serve_check.json and serve_check.md.
#
# Environments and downloads go to $SERVE_ENVS (/work/serve-envs), built once and reused on a rerun
# (rebuilt when their recipe below changes); model folders and logs go to $SERVE_WORK (/tmp/serve-check).
# Time on 2 busy cores: first run about 40-60 min (the llama.cpp build and the pip installs dominate),
# a rerun about 10-20 min (training, conversions, ONNX export). SERVE_CHECK_REUSE_MODEL=1 keeps the
# adapter and exports of the previous run instead of training again.
#
# Usage: bash benchmarks/serve_check.sh        (needs the network to PyPI and Debian on a first run)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENVS="${SERVE_ENVS:-/work/serve-envs}"
WORK="${SERVE_WORK:-/tmp/serve-check}"
LCP_VERSION=0.3.36
CONVERT_TORCH="torch==2.13.0"   # the pinned torch==2.11.0 CPU wheel lives on the PyTorch index only
ONNX_TORCH="torch==2.13.0"
HELPER="$ROOT/benchmarks/serve_check.py"
SELF="$ROOT/benchmarks/serve_check.sh"
OUT_JSON="$ROOT/benchmarks/results/serve_check.json"
SDIST="$ENVS/dl/llama_cpp_python-$LCP_VERSION.tar.gz"
SRC="$ENVS/src/llama_cpp_python-$LCP_VERSION"
LLAMA_CPP="$SRC/vendor/llama.cpp"
export SERVE_CHECK_T0="${SERVE_CHECK_T0:-$(date +%s)}"   # shared with the stage processes

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1
# The system Python (not a venv's, should one be active): the base of every environment built here.
BASE_PY="$(python3 -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
mkdir -p "$ENVS/logs" "$WORK/stages" "$WORK/logs" "$WORK/results"

say() { echo "[serve-check +$(($(date +%s) - SERVE_CHECK_T0))s] $*" >&2; }

# record NAME RC SECONDS LOG: a stage's outcome for the report (the last log line names a failure).
record() {
  "$BASE_PY" - "$WORK/stages/$1.json" "$2" "$3" "$4" <<'EOF'
import json, sys
path, rc, seconds, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
lines = [l for l in open(log, errors="replace").read().splitlines() if l.strip()]
out = {"rc": rc, "seconds": seconds, "log": log}
if rc:
    out["error"] = " | ".join(lines[-3:])
json.dump(out, open(path, "w"), indent=2)
EOF
}

# stage NAME FUNCTION...: runs it in a bash process of its own (errexit on), tees its output to a log,
# and records its rc and seconds.
# A failed stage is recorded and reported; the script goes on and exits 1 at the end.
FAILED=()
stage() {
  local name=$1 start=$SECONDS rc log="$WORK/logs/$1.log"
  shift
  say "== $name"
  set +e
  bash "$SELF" __run "$@" 2>&1 | tee "$log"   # a fresh bash: errexit holds inside (not so in a subshell
  rc=${PIPESTATUS[0]}                         # of a function called from `if`)
  set -e
  record "$name" "$rc" "$((SECONDS - start))" "$log"
  if [ "$rc" -ne 0 ]; then
    say "!! $name failed (rc $rc) after $((SECONDS - start)) s; see $log"
    FAILED+=("$name")
    return 1
  fi
  say "== $name done in $((SECONDS - start)) s"
}

# env NAME RECIPE: builds $ENVS/NAME with the function RECIPE unless it was built by the same recipe.
env_build() {
  local dir="$ENVS/$1" recipe=$2 key start=$SECONDS
  key="$(declare -f "$recipe" | sed "s|\$CONVERT_TORCH|$CONVERT_TORCH|;s|\$ONNX_TORCH|$ONNX_TORCH|" | sha1sum | cut -c1-12)"
  if [ -f "$dir/.serve-check-built.json" ] && grep -q "\"key\": \"$key\"" "$dir/.serve-check-built.json"; then
    say "reusing $dir (built by this recipe: $(cat "$dir/.serve-check-built.json" | tr -d '\n '))"
    return 0
  fi
  say "building $dir (log: $ENVS/logs/$1.log)"
  rm -rf "$dir"
  "$BASE_PY" -m venv "$dir"
  bash "$SELF" __run "$recipe" "$dir" > "$ENVS/logs/$1.log" 2>&1 || { tail -20 "$ENVS/logs/$1.log" >&2; return 1; }
  printf '{"key": "%s", "seconds": %d, "built": "%s"}\n' "$key" "$((SECONDS - start))" "$(date -Is)" \
    > "$dir/.serve-check-built.json"
  say "built $dir in $((SECONDS - start)) s"
}

# --------------------------------------------------------------------------------- tools and sources
tools() {
  local missing=()
  command -v cmake > /dev/null || missing+=(cmake)
  command -v g++ > /dev/null || missing+=(g++)
  command -v make > /dev/null || missing+=(make)
  if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
  echo "cmake: $(cmake --version | head -1); g++: $(g++ --version | head -1)"
}

sources() {
  if [ ! -f "$SDIST" ]; then
    "$BASE_PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LCP_VERSION" -d "$ENVS/dl"
  fi
  if [ ! -f "$LLAMA_CPP/convert_hf_to_gguf.py" ]; then
    rm -rf "$SRC" && mkdir -p "$ENVS/src" && tar xzf "$SDIST" -C "$ENVS/src"
  fi
  echo "source package: $SDIST ($(du -h "$SDIST" | cut -f1)); sha256 $(sha256sum "$SDIST" | cut -c1-16)..."
}

# --------------------------------------------------------------------------------- environment recipes
# llama-cpp-python from its source package, CPU only (no CUDA/Metal/Vulkan/HIP/OpenCL/BLAS/RPC), no llava.
recipe_llama() {
  CMAKE_ARGS="-DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_HIP=OFF -DGGML_OPENCL=OFF -DGGML_BLAS=OFF -DGGML_RPC=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=2 "$1/bin/pip" install -v --no-binary llama-cpp-python "$SDIST"
}

# The converter's requirements file as pinned, except torch (see CONVERT_TORCH) and its extra index.
recipe_convert() {
  local req="$LLAMA_CPP/requirements"
  sed -e '/^--extra-index-url/d' -e "s|^torch==.*|$CONVERT_TORCH|" -e "s|^-r \./|-r $req/|" \
    "$req/requirements-convert_hf_to_gguf.txt" > "$1/requirements-convert.txt"
  cat "$1/requirements-convert.txt"
  "$1/bin/pip" install "$CONVERT_TORCH"
  "$1/bin/pip" install -r "$1/requirements-convert.txt"
}

recipe_onnx() {
  "$1/bin/pip" install "$ONNX_TORCH"
  "$1/bin/pip" install "optimum-onnx[onnxruntime]" onnxruntime
}

# --------------------------------------------------------------------------------- stages
model() {
  # shellcheck source=/dev/null
  source "$ROOT/scripts/setup.sh"
  if [ "${SERVE_CHECK_REUSE_MODEL:-0}" = 1 ] && [ -f "$WORK/final/config.json" ] && [ -f "$WORK/ensemble/config.json" ]; then
    echo "SERVE_CHECK_REUSE_MODEL=1: keeping $WORK/run, $WORK/final and $WORK/ensemble"
    return 0
  fi
  local t=$SECONDS times="$WORK/results/model_times.txt"
  modetune train --config quick --output-dir "$WORK/run" --overwrite
  echo "train_s $((SECONDS - t))" | tee "$times" && t=$SECONDS
  modetune export --adapter "$WORK/run/adapter" --output "$WORK/final" --final-member --overwrite
  echo "export_final_member_s $((SECONDS - t))" | tee -a "$times" && t=$SECONDS
  modetune export --adapter "$WORK/run/adapter" --output "$WORK/ensemble" --overwrite
  echo "export_ensemble_s $((SECONDS - t))" | tee -a "$times"
  "$BASE_PY" -c "import json,sys; c=json.load(open(sys.argv[1])); print('final member:', c['architectures'], 'rope_theta', c.get('rope_theta'), 'rope_parameters', c.get('rope_parameters'))" "$WORK/final/config.json"
}

reference() { "$ROOT/.venv/bin/python" "$HELPER" --work "$WORK" reference --model "$WORK/final" --adapter "$WORK/run/adapter"; }
registry() { "$BASE_PY" "$HELPER" --work "$WORK" registry --conversion "$LLAMA_CPP/conversion/__init__.py"; }
convert() {
  env_build convert recipe_convert
  "$ENVS/convert/bin/python" "$HELPER" --work "$WORK" convert --converter "$LLAMA_CPP/convert_hf_to_gguf.py" \
    --model "$WORK/final" --ensemble "$WORK/ensemble"
}
hf4() { "$ENVS/convert/bin/python" "$HELPER" --work "$WORK" hf4 --model "$WORK/final"; }
llama() {
  env_build llama-cpp recipe_llama
  "$ENVS/llama-cpp/bin/python" "$HELPER" --work "$WORK" llama
}
onnx() {
  env_build onnx recipe_onnx
  rm -rf "$WORK/onnx"
  "$ENVS/onnx/bin/python" "$HELPER" --work "$WORK" onnx --model "$WORK/final"
}
report() { "$ROOT/.venv/bin/python" "$HELPER" --work "$WORK" report --envs "$ENVS" --out-json "$OUT_JSON" \
  --started "$SERVE_CHECK_T0"; }

# --------------------------------------------------------------------------------- main
main() {
  say "serve check: envs in $ENVS, work in $WORK, results in ${OUT_JSON%.json}.{json,md}"
  rm -f "$WORK"/stages/*.json "$WORK"/results/*.json "$WORK"/results/model_times.txt
  stage tools tools
  stage sources sources
  stage model model || { say "no model, nothing to compare"; exit 1; }
  stage reference reference || { say "no reference, nothing to compare"; exit 1; }
  stage registry registry || true
  if stage convert convert; then
    stage hf4 hf4 || true
    stage llama llama || true
  fi
  stage onnx onnx || true
  stage report report
  say "done in $(($(date +%s) - SERVE_CHECK_T0)) s; ${#FAILED[@]} failed stage(s)${FAILED[*]:+: ${FAILED[*]}}"
  [ ${#FAILED[@]} -eq 0 ]
}

# Bash reads a script as it runs it: everything below is one compound command per line, parsed whole
# before it runs, so editing this file during a run cannot derail the run.
if [ "${1:-}" = __run ]; then   # internal: one stage or recipe, in a process of its own
  shift
  "$@"
  exit 0
fi
main "$@"; exit $?
